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


@pytest.mark.django_db
def test_a_database_outage_answers_503_with_retry_after_even_from_middleware(client, broken_sessions):
    from django.db import OperationalError

    client.raise_request_exception = False
    client.cookies["sessionid"] = "x" * 32
    broken_sessions(OperationalError("server closed the connection unexpectedly"))
    response = client.get("/rank/")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert b"Back in a moment" in response.content


@pytest.mark.django_db
def test_any_other_server_error_is_still_a_500(client, broken_sessions):
    client.raise_request_exception = False
    client.cookies["sessionid"] = "x" * 32
    broken_sessions(RuntimeError("a bug"))
    response = client.get("/rank/")
    assert response.status_code == 500
    assert not response.has_header("Retry-After")
