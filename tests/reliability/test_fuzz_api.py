"""Short schemathesis run (bench/fuzz_api.py with 3 examples per operation): no API operation answers 5xx
to schema-generated input.

The seed is fixed so that the suite is deterministic: a random seed made CI fail on one draw in ~5 (an
overlong query string that gunicorn refuses with an undocumented 414, since documented). This seed is the
one that found it; the bench itself draws a new seed each run to keep exploring."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SEED = "142185224861260639039205107858871709279"


def test_schema_generated_requests_to_every_api_operation_never_get_a_server_error():
    done = subprocess.run(
        [sys.executable, "bench/fuzz_api.py", "--examples", "3", "--seed", SEED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0, out
    assert "Tested:" in out, out
