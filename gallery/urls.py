from __future__ import annotations

from django.urls import path

from gallery import views

app_name = "gallery"

urlpatterns = [
    path("files/<path:key>", views.file, name="file"),
]
