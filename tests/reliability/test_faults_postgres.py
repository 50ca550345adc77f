"""Short version of bench/faults_postgres.py: an embedded PostgreSQL (owned by the test, never the shared
server) is stopped for 3 s in the middle of 10 annotators' load and started again. Requests during the
outage fail cleanly (5xx, none hangs), the load recovers until every task has K rankings, and every
acknowledged submission is stored exactly once."""

from __future__ import annotations

import subprocess
import sys

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
