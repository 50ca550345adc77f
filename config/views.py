from __future__ import annotations

import sys

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views import defaults
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
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers and tools ask for /favicon.ico whatever the page links: send them to the one icon.

    Resolved per request, not at import: the static name carries the manifest's hash, which only exists once
    collectstatic ran; and a temporary redirect, so a browser never keeps an old hash.
    """
    return redirect(static("img/favicon.svg"))


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


DATABASE_DOWN_RETRY_AFTER_S = 5
_DATABASE_DOWN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Back in a moment · IterComp Studio</title></head><body><main>
<h1>Back in a moment</h1><p>The database is not answering. Nothing you sent was lost: what was not saved
was not acknowledged. Try again in a few seconds.</p></main></body></html>"""


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: a database outage is a temporary condition (503 + Retry-After), not a bug (500).

    Django calls this inside its ``except`` block, so ``sys.exc_info()`` is the failure, including one
    raised by middleware (sessions, auth) before any view ran. The page is a fixed string: rendering a
    template with the request's context would touch the database that is down.
    """
    exc = sys.exc_info()[1]
    if isinstance(exc, (OperationalError, InterfaceError)):
        response = HttpResponse(_DATABASE_DOWN_PAGE, status=503, content_type="text/html; charset=utf-8")
        response["Retry-After"] = str(DATABASE_DOWN_RETRY_AFTER_S)
        return response
    return defaults.server_error(request)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: under /api/ the JSON error object the OpenAPI schema documents, elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)
