"""Short version of bench/faults_postgres.py: an embedded PostgreSQL (owned by the test, never the shared
server) is stopped for 3 s in the middle of 10 annotators' load and started again. Requests during the
outage fail cleanly (5xx, none hangs), the load recovers until every task has K rankings, and every
acknowledged submission is stored exactly once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_postgres_restart_mid_load_fails_cleanly_recovers_and_loses_nothing_acknowledged():
    done = subprocess.run(
        [sys.executable, "bench/faults_postgres.py", "--annotators", "10", "--tasks", "10", "--down", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout + done.stderr[-2000:]
    assert done.returncode == 0, out
    assert "postgres back after" in out and "clean failures only: True" in out, out


@pytest.fixture
def broken_sessions(monkeypatch):
    """Make the session middleware's database read fail the way it does when PostgreSQL is down."""
    from django.contrib.sessions.backends.db import SessionStore

    def fail_with(exc: Exception) -> None:
        def load(self):
            raise exc

        monkeypatch.setattr(SessionStore, "load", load)

    return fail_with


def _database_down() -> Exception:
    from django.db import OperationalError

    return OperationalError("server closed the connection unexpectedly")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("make_error", "status", "retry_after"),
    [(_database_down, 503, "5"), (lambda: RuntimeError("a bug"), 500, None)],
    ids=["database-outage-is-503-with-retry-after-even-from-middleware", "any-other-error-is-still-500"],
)
def test_server_errors_tell_a_database_outage_from_a_bug(
    client, broken_sessions, make_error, status, retry_after
):
    client.raise_request_exception = False
    client.cookies["sessionid"] = "x" * 32
    broken_sessions(make_error())
    response = client.get("/rank/")
    assert response.status_code == status
    assert response.get("Retry-After") == retry_after
    if status == 503:
        assert b"Back in a moment" in response.content
