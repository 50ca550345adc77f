"""Login throttling: after LOGIN_FAILURES_LIMIT failed logins for one username from one client address
within LOGIN_FAILURES_WINDOW_S seconds, further attempts get 429 without the password being checked.

The counters live in the "throttle" cache, which is Redis (the broker's server, its own key prefix), so every
gunicorn worker and every web machine sees the same counts; a per-process LocMem cache would multiply the
limit by the number of processes. If Redis cannot be reached the login still works (fail open, logged):
an outage of the broker must not lock every user out.
"""

from __future__ import annotations

import hashlib
import logging

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.core.cache import caches
from django.http import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)


def _key(request: HttpRequest) -> str:
    username = (request.POST.get("username") or "").strip().lower()
    address = request.META.get("REMOTE_ADDR", "")
    return "login-fail:" + hashlib.sha256(f"{username}\0{address}".encode()).hexdigest()


def _failures(key: str) -> int:
    try:
        return int(caches["throttle"].get(key) or 0)
    except Exception:  # noqa: BLE001 - any cache outage: fail open
        logger.warning("login throttle: cache unavailable, not throttling", exc_info=True)
        return 0


def _record_failure(key: str) -> None:
    cache = caches["throttle"]
    try:
        # The window starts at the first failure; add() is atomic, so concurrent failures all count.
        cache.add(key, 0, timeout=settings.LOGIN_FAILURES_WINDOW_S)
        cache.incr(key)
    except Exception:  # noqa: BLE001
        logger.warning("login throttle: cache unavailable, failure not counted", exc_info=True)


def _forget(key: str) -> None:
    try:
        caches["throttle"].delete(key)
    except Exception:  # noqa: BLE001
        logger.warning("login throttle: cache unavailable", exc_info=True)


class ThrottledLoginView(LoginView):
    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        key = _key(request)
        if _failures(key) >= settings.LOGIN_FAILURES_LIMIT:
            minutes = max(1, settings.LOGIN_FAILURES_WINDOW_S // 60)
            response = self.render_to_response(
                self.get_context_data(
                    throttled=f"Too many failed logins for this username. Try again in {minutes} minutes."
                ),
                status=429,
            )
            response["Retry-After"] = str(settings.LOGIN_FAILURES_WINDOW_S)
            return response
        response = super().post(request, *args, **kwargs)
        if 300 <= response.status_code < 400:
            _forget(key)
        else:
            _record_failure(key)
        return response
