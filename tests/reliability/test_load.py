"""Short version of bench/load_annotators.py: 12 concurrent annotators claim and submit against gunicorn
(DEBUG=0) and PostgreSQL until 12 tasks have K=3 rankings each; no errors, every accepted ranking stored
exactly once, no task over K, nobody ranks a task twice."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_concurrent_annotators_fill_every_task_exactly_to_k_without_errors():
    done = subprocess.run(
        [sys.executable, "bench/load_annotators.py", "--annotators", "12", "--tasks", "12", "--k", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout + done.stderr[-3000:]
    assert done.returncode == 0, out
    assert "accepted(303)=36" in out and "'over_k': 0" in out and "'duplicates': 0" in out, out
