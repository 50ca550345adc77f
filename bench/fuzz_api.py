#!/usr/bin/env python3
"""API fuzzing: schemathesis against /api/schema/, every operation, as a researcher with a token.

    .venv/bin/python bench/fuzz_api.py [--examples 100]

Own database (fuzz_api_<pid>, dropped at the end), gunicorn with DEBUG=0 as in bench/load_annotators.py, a
researcher's API token, then `schemathesis run` with the not_a_server_error check only (every operation,
--max-examples N). Prints schemathesis' summary; exit status is schemathesis'.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load_annotators import PY, production_env, start_server  # noqa: E402
from ranking_submit import _free_port, _with_db  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100)
    args = parser.parse_args()
    import psycopg

    base_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    db_name = f"fuzz_api_{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="fuzz-api-"))
    env = production_env(_with_db(base_url, db_name), work)
    admin_url = _with_db(base_url, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    server = None
    try:
        subprocess.run([PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        subprocess.run(
            [PY, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
        )
        os.environ.update(env)
        import django

        django.setup()
        from annotation.services.export import api_token_rotate
        from annotation.services.users import user_create

        token = api_token_rotate(
            user=user_create(username="fuzzer", role="researcher", password="fuzz-pw-12345!")
        )
        port = _free_port()
        server = start_server(env, port)
        base = f"http://127.0.0.1:{port}"
        done = subprocess.run(
            [
                str(Path(PY).parent / "schemathesis"),
                "run",
                f"{base}/api/schema/",
                "--url",
                base,
                "--checks",
                "not_a_server_error",
                "--max-examples",
                str(args.examples),
                "-H",
                f"Authorization: Token {token.key}",
                "--workers",
                "2",
            ],
            cwd=work,  # schemathesis keeps its .schemathesis/ state in the working folder: not in the repo
            env=env,
        )
        return done.returncode
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(20)
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
