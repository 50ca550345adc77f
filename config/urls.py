from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from config import views
from config.login_throttle import ThrottledLoginView

handler500 = "config.views.server_error"
handler404 = "config.views.not_found"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("ops/health/", views.ops_health, name="ops-health"),
    path("ops/ping/", views.ops_ping, name="ops-ping"),
    path("ops/ping/<str:task_id>/", views.ops_ping_result, name="ops-ping-result"),
    path("admin/", admin.site.urls),
    path("", include("annotation.urls")),
    path("gallery/", include("gallery.urls")),
    path("training/", include("training.urls")),
    path("api/", include("config.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as its own request: no inline script, so the
    # page runs under the studio's CSP (script-src 'self').
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
]

if settings.SERVE_MEDIA:
    # Content-addressed files never change, so a long cache lifetime is safe.
    urlpatterns += [
        re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}),
    ]
