from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from annotation.roles import is_admin
from config import ops
from gallery.selectors import category_overview

HTMX_STOP_POLLING = 286


def _require_admin(request: HttpRequest) -> None:
    if not is_admin(request.user):
        raise PermissionDenied("Only admins can see workers and queues.")


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html", {"categories": category_overview()})


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    database = ops.database_status()
    return JsonResponse({"database": database}, status=200 if database == "ok" else 503)


@login_required
@require_GET
def ops_health(request: HttpRequest) -> HttpResponse:
    _require_admin(request)
    return render(request, "ops/health.html", {"health": ops.health_snapshot()})


@login_required
@require_POST
def ops_ping(request: HttpRequest) -> HttpResponse:
    _require_admin(request)
    ping = {"task_id": ops.ping_send(), "done": False}
    if request.htmx:
        return render(request, "ops/health.html#ping-result", {"ping": ping})
    return render(request, "ops/health.html", {"health": ops.health_snapshot(), "ping": ping})


@login_required
@require_GET
def ops_ping_result(request: HttpRequest, task_id: str) -> HttpResponse:
    _require_admin(request)
    ping = ops.ping_result(task_id)
    if request.htmx:
        response = render(request, "ops/health.html#ping-result", {"ping": ping})
        if ping["done"]:
            response.status_code = HTMX_STOP_POLLING
        return response
    return render(request, "ops/health.html", {"health": ops.health_snapshot(), "ping": ping})
