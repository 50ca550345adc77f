"""Production settings and login throttling.

* With production variables (DEBUG=0, a long SECRET_KEY, ALLOWED_HOSTS), cookies are Secure/HttpOnly, HTTP
  redirects to HTTPS, HSTS is a year with subdomains, and every response carries CSP, X-Frame-Options,
  nosniff, Referrer-Policy (``check --deploy`` itself is tests/foundation/test_settings_and_deploy.py).
* Login throttling: LOGIN_FAILURES_LIMIT failures for one username from one address → 429, even with the
  right password; other usernames and other addresses are unaffected; counters live in Redis so every
  gunicorn worker shares them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys

import pytest
from django.core.cache import caches
from django.test import Client

from tests.conftest import ROOT

PASSWORD = "pw-for-tests-123"


def test_production_variables_turn_on_every_https_and_cookie_protection():
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": "studio.example.org",
    }
    for name in ("SECURE_SSL_REDIRECT", "SECURE_COOKIES", "SECURE_HSTS_SECONDS"):
        env.pop(name, None)
    code = (
        "import json, django; django.setup(); from django.conf import settings as s; print(json.dumps({k: "
        "getattr(s, k) for k in ['SECURE_SSL_REDIRECT', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', "
        "'SESSION_COOKIE_HTTPONLY', 'SECURE_HSTS_SECONDS', 'SECURE_HSTS_INCLUDE_SUBDOMAINS', "
        "'SECURE_CONTENT_TYPE_NOSNIFF', 'X_FRAME_OPTIONS', 'DEBUG', 'LOGIN_FAILURES_LIMIT']}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    values = json.loads(done.stdout.strip().splitlines()[-1])
    assert values == {
        "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SESSION_COOKIE_HTTPONLY": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_CONTENT_TYPE_NOSNIFF": True,
        "X_FRAME_OPTIONS": "DENY",
        "DEBUG": False,
        "LOGIN_FAILURES_LIMIT": 5,
    }


@pytest.fixture
def production_client(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SESSION_COOKIE_SECURE = True
    settings.CSRF_COOKIE_SECURE = True
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    return Client()  # a new client builds its middleware chain from these settings


def test_responses_carry_hsts_csp_and_framing_headers_and_http_redirects(production_client, make_user, db):
    assert production_client.get("/accounts/login/").status_code == 301  # plain HTTP → HTTPS
    response = production_client.get("/accounts/login/", secure=True)
    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    csp = response["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response.cookies["csrftoken"]["secure"]

    make_user("annotator", username="ann")
    response = production_client.post(
        "/accounts/login/", {"username": "ann", "password": PASSWORD}, secure=True
    )
    assert response.status_code == 302
    session = response.cookies["sessionid"]
    assert session["secure"] and session["httponly"] and session["samesite"] == "Lax"


@pytest.fixture
def address():
    """Counters are keyed by username and address: a fresh address per test, so no counter carries over.
    (Never cache.clear(): that is FLUSHDB on a Redis database other runs' queues share.)"""
    return f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


def _login(client: Client, username: str, password: str, address: str):
    return client.post("/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


def test_five_failed_logins_lock_that_username_from_that_address_with_429(
    client, make_user, settings, address
):
    make_user("annotator", username="victim")
    make_user("annotator", username="bystander")
    for _ in range(settings.LOGIN_FAILURES_LIMIT):
        response = _login(client, "victim", "wrong", address)
        assert response.status_code == 200 and b"did not match".replace(b" not", b"n't") in response.content
    locked = _login(client, "victim", PASSWORD, address)
    assert locked.status_code == 429
    assert b"Too many failed logins" in locked.content
    assert int(locked["Retry-After"]) == settings.LOGIN_FAILURES_WINDOW_S
    # Case and spaces do not make a new counter.
    assert _login(client, " VICTIM ", PASSWORD, address).status_code == 429
    # Another username from the same address, and the same username from another address, still log in.
    assert _login(Client(), "bystander", PASSWORD, address).status_code == 302
    assert _login(Client(), "victim", PASSWORD, "192.0.2.1").status_code == 302


def test_a_successful_login_clears_the_failures(client, make_user, settings, address):
    make_user("annotator", username="forgetful")
    for _ in range(settings.LOGIN_FAILURES_LIMIT - 1):
        assert _login(client, "forgetful", "wrong", address).status_code == 200
    assert _login(client, "forgetful", PASSWORD, address).status_code == 302
    for _ in range(settings.LOGIN_FAILURES_LIMIT - 1):
        assert _login(Client(), "forgetful", "wrong", address).status_code == 200
    assert _login(Client(), "forgetful", PASSWORD, address).status_code == 302


def test_the_throttle_counters_are_shared_through_redis_not_per_process(settings):
    backend = caches["throttle"]
    assert type(backend).__module__ == "django.core.cache.backends.redis"
    assert settings.CACHES["throttle"]["LOCATION"].startswith(("redis://", "rediss://", "unix://"))


def test_login_still_works_when_the_throttle_cache_is_down(client, make_user, settings, caplog, address):
    make_user("annotator", username="calm")
    settings.CACHES = {
        **settings.CACHES,
        "throttle": {**settings.CACHES["throttle"], "LOCATION": "redis://127.0.0.1:1/0"},
    }
    caches._settings = None  # noqa: SLF001 - re-read CACHES for this test
    with contextlib.suppress(KeyError, AttributeError):
        del caches["throttle"]
    assert _login(client, "calm", "wrong", address).status_code == 200
    assert _login(client, "calm", PASSWORD, address).status_code == 302
    assert "login throttle: cache unavailable" in caplog.text
