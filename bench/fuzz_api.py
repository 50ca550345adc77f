#!/usr/bin/env python3
"""API fuzzing: schemathesis against /api/schema/, every operation, as a researcher with a token.

    .venv/bin/python bench/fuzz_api.py [--examples 100]

Own database (fuzz_api_<pid>, dropped at the end), gunicorn with DEBUG=0 as in bench/load_annotators.py, a
researcher's API token, then `schemathesis run` with every check (`--checks all`: no server error, and
status codes, content types, headers and bodies conforming to the schema; every operation, --max-examples
N). Prints schemathesis' summary; exit status is schemathesis'.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load_annotators import PY, scratch_deployment, start_server, stop_server  # noqa: E402
from ranking_submit import _free_port  # noqa: E402

# schemathesis' default list of statuses that count as refusing schema-violating input.
NEGATIVE_REJECTIONS = ("400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--checks", default="all", help="schemathesis checks (default: all)")
    parser.add_argument("--seed", help="schemathesis seed, to replay a run that it printed")
    args = parser.parse_args()
    with scratch_deployment("fuzz_api") as env:
        from annotation.services.export import api_token_rotate
        from annotation.services.users import user_create

        token = api_token_rotate(
            user=user_create(username="fuzzer", role="researcher", password="fuzz-pw-12345!")
        )
        # An overlong query string is refused by gunicorn with 414 before Django runs: a rejection too.
        config = Path(env["STUDIO_BENCH_WORK"]) / "schemathesis.toml"
        config.write_text(
            "[checks.negative_data_rejection]\nexpected-statuses = "
            + repr([*NEGATIVE_REJECTIONS, "414"]).replace("'", '"')
            + "\n"
        )
        port = _free_port()
        server = start_server(env, port)
        base = f"http://127.0.0.1:{port}"
        try:
            done = subprocess.run(
                [
                    str(Path(PY).parent / "schemathesis"),
                    "--config-file",
                    str(config),
                    "run",
                    f"{base}/api/schema/",
                    "--url",
                    base,
                    "--checks",
                    args.checks,
                    "--max-examples",
                    str(args.examples),
                    "-H",
                    f"Authorization: Token {token.key}",
                    "--workers",
                    "2",
                    *(["--seed", args.seed] if args.seed else []),
                ],
                # schemathesis keeps its .schemathesis/ state in the working folder: not in the repo
                cwd=env["STUDIO_BENCH_WORK"],
                env=env,
            )
            return done.returncode
        finally:
            stop_server(server)


if __name__ == "__main__":
    sys.exit(main())
