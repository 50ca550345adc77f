from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": "k" * 20 + "Zq8#vL2@pX9!mR4$wT7%" + "n" * 20,
    "ALLOWED_HOSTS": "studio.example.org",
    "SECURE_SSL_REDIRECT": "1",
    "SECURE_COOKIES": "1",
    "SECURE_HSTS_SECONDS": "31536000",
}


def _manage(extra_env: dict[str, str], *args: str, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, **extra_env}
    # The browser tests lift Django's async guard for their own process; a deployment never does.
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    for name in drop:
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("env", "drop", "message"),
    [
        ({"DEBUG": "maybe"}, (), "DEBUG='maybe' is not a boolean"),
        ({"DEBUG": "0"}, ("SECRET_KEY",), "SECRET_KEY is required"),
        ({"DEBUG": "0", "SECRET_KEY": "short"}, (), "at least 50 random characters"),
        ({"DATABASE_URL": "sqlite:///x.db"}, (), "must be a PostgreSQL URL"),
        ({}, ("DATABASE_URL",), "DATABASE_URL is not set"),
        ({"CELERY_BROKER_URL": "amqp://guest@localhost//"}, (), "is not a Redis URL"),
        ({"TASK_LEASE_SECONDS": "soon"}, (), "TASK_LEASE_SECONDS='soon' is not an integer"),
        ({"STORAGE_BACKEND": "ftp"}, (), "STORAGE_BACKEND='ftp' must be one of filesystem, s3"),
        ({"MEDIA_ROOT": "relative/media"}, (), "must be an absolute path"),
    ],
)
def test_bad_settings_stop_the_process_with_a_message_naming_the_variable(env, drop, message):
    result = _manage(env, "check", drop=drop)
    assert result.returncode != 0
    assert message in result.stderr


def test_deploy_check_is_clean_with_production_variables():
    result = _manage(PRODUCTION_ENV, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_migrations_match_the_models():
    result = _manage({}, "makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
