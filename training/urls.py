from __future__ import annotations

from django.urls import path

from training import views

app_name = "training"

urlpatterns = [
    path("rounds/", views.round_list, name="round-list"),
    path("rounds/new/", views.round_new, name="round-new"),
    path("rounds/<int:pk>/", views.round_detail, name="round-detail"),
    path("rounds/<int:pk>/progress/", views.round_progress, name="round-progress"),
    path("rounds/<int:pk>/cancel/", views.round_cancel_view, name="round-cancel"),
    path("rounds/<int:pk>/continue/", views.round_continue_view, name="round-continue"),
    path("rounds/<int:pk>/resume/", views.round_resume_view, name="round-resume"),
    path("rounds/<int:pk>/figures/<slug:name>.<str:fmt>", views.round_figure_data, name="round-figure-data"),
    path("selection/", views.selection_curves, name="selection-curves"),
    path("checkpoints/<str:kind>/<int:pk>/download/", views.checkpoint_download, name="checkpoint-download"),
]
