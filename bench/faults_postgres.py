#!/usr/bin/env python3
"""Fault: PostgreSQL restarted in the middle of the annotators' load.

    .venv/bin/python bench/faults_postgres.py [--annotators 20] [--tasks 40] [--k 3] [--down 3]

Starts its own PostgreSQL (pgserver's binaries, tests/reliability/servers.py; never the shared 5432), runs
bench/load_annotators.py's annotators against gunicorn (DEBUG=0), stops PostgreSQL (immediate mode, as a
crash) one second into the load, keeps it down --down seconds, starts it again. Then checks: requests during
the outage failed cleanly (503 + Retry-After, no hang: slowest request printed), the load recovered (all tasks reach K),
every acknowledged (303) submission is stored exactly once and every stored one was acknowledged (annotators
repeat a submission that met the outage with its idempotency key, as a person pressing "try again" does),
no task over K.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load_annotators import PY, check_database, production_env, run_load, seed, start_server  # noqa: E402
from ranking_submit import _free_port  # noqa: E402

from tests.reliability.servers import EmbeddedPostgres  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--down", type=float, default=3.0)
    args = parser.parse_args()
    pg = EmbeddedPostgres()
    pg.start()
    server = None
    try:
        import psycopg

        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute('CREATE DATABASE "studio"')
        work = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        env = production_env(pg.url("studio"), work)
        # Connections are re-checked before use (conn_health_checks), so a restart costs one failed request.
        subprocess.run([PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        subprocess.run(
            [PY, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
        )
        os.environ.update(env)
        import django

        django.setup()
        sessions = seed(args.annotators, args.tasks, args.k)
        from django.db import connection

        connection.close()
        port = _free_port()
        server = start_server(env, port)
        events: list[str] = []

        def restart() -> None:
            time.sleep(1.0)
            t0 = time.perf_counter()
            pg.stop("immediate")
            events.append(f"postgres stopped (immediate) at +1.0s; down {args.down}s")
            time.sleep(args.down)
            pg.start()
            events.append(f"postgres back after {time.perf_counter() - t0:.1f}s")

        fault = threading.Thread(target=restart)
        fault.start()
        result = run_load(port, sessions, max_rounds=args.tasks * 4)
        fault.join()
        statuses = result["statuses"]
        slowest = max(result["get"] + result["post"]) * 1000
        print("\n".join(events))
        print(
            f"requests: {len(statuses)}; status counts: "
            + ", ".join(f"{s}: {statuses.count(s)}" for s in sorted(set(statuses)))
            + f"; slowest request {slowest:.0f} ms; wall {result['wall']:.1f}s",
            flush=True,
        )
        checks = check_database(args.k)
        connection.close()
        print(f"accepted (303): {result['accepted']}; database: {checks}", flush=True)
        # The outage must read as "temporarily unavailable" (503 + Retry-After), never as a crash (500).
        clean = all(s in (200, 303, 503) for s in statuses)
        full = checks["rankings"] == args.tasks * args.k
        ok = (
            clean
            and full
            and checks["rankings"] == result["accepted"]
            and checks["over_k"] == 0
            and checks["duplicates"] == 0
            and slowest < 30_000
        )
        print(f"clean failures only: {clean}; recovered to every task at K: {full}")
        print("OK" if ok else "FAILED", flush=True)
        return 0 if ok else 1
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(20)
        pg.close()


if __name__ == "__main__":
    sys.exit(main())
