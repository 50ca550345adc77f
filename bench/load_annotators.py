#!/usr/bin/env python3
"""Load: N concurrent simulated annotators claiming and submitting against the production-style server.

    .venv/bin/python bench/load_annotators.py [--annotators 50] [--tasks 200] [--k 3]

Own database (load_annotators_<pid>, dropped at the end) on the PostgreSQL of DATABASE_URL (default the local
server), gunicorn with DEBUG=0 (2 workers × 4 threads, gthread) as in bench/ranking_submit.py. Every
annotator, on its own keep-alive connection, loops: GET /rank/spatial/ (claims a task), parse the claim,
POST the ranking form (303), until the page offers no task. Tasks need K rankings each, so the run is bounded
at tasks × K submissions. Prints throughput, p50/p99 of both requests, errors; then checks in the database
that every accepted submission is stored exactly once, no annotator ranked a task twice and no task has more
than K rankings. Exit status 1 if any check fails. tests/reliability/test_load.py runs a short version.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ranking_submit import _free_port, _with_db, percentile  # noqa: E402

PY = sys.executable
CLAIM = re.compile(rb'action="/rank/claims/(\d+)/submit/"')
TASK = re.compile(rb'name="task" value="(\d+)"')
KEY = re.compile(rb'name="idempotency_key" value="([^"]+)"')
LABEL = re.compile(rb'name="rank_(\d+)"')


def seed(n_users: int, n_tasks: int, k: int) -> list[str]:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    from annotation.models import AnnotatorProfile, RankingTask, TaskImage
    from gallery.models import Category, Generator, Image
    from gallery.services import prompt_ensure

    category = Category.objects.get(slug="spatial")
    generators = [Generator.objects.create(name=f"load-gen-{i}", slug=f"load-gen-{i}") for i in range(6)]
    for t in range(n_tasks):
        prompt, _ = prompt_ensure(text=f"load prompt {t}: a red cube left of a blue ball", category=category)
        images = Image.objects.bulk_create(
            Image(
                prompt=prompt,
                generator=g,
                file=f"images/{t:032x}{i:032x}.png",
                sha256=f"{t:032x}{i:032x}",
                format="PNG",
                width=512,
                height=512,
            )
            for i, g in enumerate(generators)
        )
        task = RankingTask.objects.create(prompt=prompt, required_rankings=k)
        TaskImage.objects.bulk_create(
            TaskImage(task=task, image=im, position=i) for i, im in enumerate(images)
        )
    User = get_user_model()
    users = User.objects.bulk_create(User(username=f"load{u}", password="!") for u in range(n_users))
    AnnotatorProfile.objects.bulk_create(AnnotatorProfile(user=u, role="annotator") for u in users)
    sessions = []
    for user in users:
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.save()
        sessions.append(store.session_key)
    return sessions


class Annotator:
    def __init__(self, port: int, session: str) -> None:
        self.port, self.session = port, session
        self.csrf = secrets.token_hex(16)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def _request(self, method: str, path: str, body: str | None = None) -> tuple[int, bytes, float]:
        headers = {"Host": "127.0.0.1", "Cookie": f"sessionid={self.session}; csrftoken={self.csrf}"}
        if body is not None:
            headers |= {"Content-Type": "application/x-www-form-urlencoded", "X-CSRFToken": self.csrf}
        start = time.perf_counter()
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                return response.status, data, time.perf_counter() - start
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt:
                    return 0, b"", time.perf_counter() - start
        raise RuntimeError("unreachable")

    def run(self, out: dict, lock: threading.Lock, max_rounds: int) -> None:
        deadline = time.perf_counter() + 120
        rounds = 0
        while rounds < max_rounds and time.perf_counter() < deadline:
            status, page, took = self._request("GET", "/rank/spatial/")
            with lock:
                out["get"].append(took)
                out["statuses"].append(status)
            if status != 200:
                time.sleep(0.25)  # a person (or the page's retry) waits a moment after an error page
                continue
            rounds += 1
            claim = CLAIM.search(page)
            if claim is None:
                return  # no task left for this annotator
            labels = sorted({int(x) for x in LABEL.findall(page)})
            order = labels[:]
            secrets.SystemRandom().shuffle(order)
            body = urlencode(
                {
                    "task": TASK.search(page).group(1).decode(),
                    "idempotency_key": (
                        KEY.search(page).group(1).decode() if KEY.search(page) else str(uuid.uuid4())
                    ),
                    "shown_at": str(int(time.time() * 1000) - 5000),
                    **{f"rank_{label}": str(pos) for pos, label in enumerate(order, start=1)},
                }
            )
            path = f"/rank/claims/{int(claim.group(1))}/submit/"
            while True:
                status, _, took = self._request("POST", path, body)
                with lock:
                    out["post"].append(took)
                    out["statuses"].append(status)
                    if status == 303:
                        out["accepted"] += 1
                # An outage (503, or no answer) leaves it unknown whether the ranking was stored: a person
                # presses "try again", and the same idempotency key makes the repeat safe either way.
                if status not in (0, 503) or time.perf_counter() >= deadline:
                    break
                time.sleep(0.25)


def run_load(port: int, sessions: list[str], max_rounds: int) -> dict:
    out: dict = {"get": [], "post": [], "statuses": [], "accepted": 0}
    lock = threading.Lock()
    threads = [
        threading.Thread(target=Annotator(port, s).run, args=(out, lock, max_rounds)) for s in sessions
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["wall"] = time.perf_counter() - start
    return out


def check_database(k: int) -> dict:
    from django.db.models import Count

    from annotation.models import Ranking

    per_task = Ranking.objects.values("task_id").annotate(n=Count("id"))
    dup = Ranking.objects.values("task_id", "annotator_id").annotate(n=Count("id")).filter(n__gt=1).count()
    return {
        "rankings": Ranking.objects.count(),
        "max_per_task": max((r["n"] for r in per_task), default=0),
        "over_k": sum(1 for r in per_task if r["n"] > k),
        "duplicates": dup,
    }


def start_server(env: dict, port: int, workers: int = 2, threads: int = 4) -> subprocess.Popen:
    import socket

    server = subprocess.Popen(
        [
            str(Path(PY).parent / "gunicorn"),
            "config.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            str(workers),
            "--threads",
            str(threads),
            "-k",
            "gthread",
            "--keep-alive",
            "30",
            "--log-level",
            "warning",
            "--timeout",
            "30",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not start")


def production_env(database_url: str, work: Path) -> dict:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14"),
        "CELERY_QUEUE_PREFIX": f"load{os.getpid()}-",
        "DEBUG": "0",
        "SECRET_KEY": "load-" + secrets.token_urlsafe(48),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "0",
        "SECURE_COOKIES": "0",
        "SECURE_HSTS_SECONDS": "0",
        "MEDIA_ROOT": str(work / "media"),
        "STATIC_ROOT": str(work / "static"),
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }


def report(result: dict, k: int, checks: dict) -> bool:
    n = len(result["post"])
    get_ms = [x * 1000 for x in result["get"]]
    post_ms = [x * 1000 for x in result["post"]]
    errors = [s for s in result["statuses"] if s not in (200, 303)]
    print(
        f"submissions: {n} in {result['wall']:.2f}s = {n / result['wall']:.1f}/s accepted(303)={result['accepted']}\n"
        f"GET /rank/ (claim): n={len(get_ms)} p50={percentile(get_ms, 0.5):.1f}ms p99={percentile(get_ms, 0.99):.1f}ms\n"
        f"POST submit:        n={n} p50={percentile(post_ms, 0.5):.1f}ms p99={percentile(post_ms, 0.99):.1f}ms\n"
        f"errors (not 200/303): {len(errors)} {sorted(set(errors))}\n"
        f"database: {checks}",
        flush=True,
    )
    return (
        not errors
        and checks["rankings"] == result["accepted"]
        and checks["over_k"] == 0
        and checks["duplicates"] == 0
    )


@contextlib.contextmanager
def scratch_deployment(prefix: str) -> Iterator[dict]:
    """A fresh database migrated, static files collected and Django set up with production settings
    (DEBUG=0: WhiteNoise serves the hashed manifest, as in production); the database is dropped after."""
    import tempfile

    import psycopg

    base_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    db_name = f"{prefix}_{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix=f"{prefix.replace('_', '-')}-"))
    env = production_env(_with_db(base_url, db_name), work)
    admin_url = _with_db(base_url, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    try:
        subprocess.run([PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        subprocess.run(
            [PY, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
        )
        os.environ.update(env)
        import django

        django.setup()
        yield {**env, "STUDIO_BENCH_WORK": str(work)}
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def stop_server(server: subprocess.Popen | None) -> None:
    if server is not None and server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    args.annotators, args.tasks = min(args.annotators, 200), min(args.tasks, 2000)

    with scratch_deployment("load_annotators") as env:
        server = None
        try:
            sessions = seed(args.annotators, args.tasks, args.k)
            port = _free_port()
            server = start_server(env, port)
            print(
                f"[load] {args.annotators} annotators, {args.tasks} tasks × K={args.k}; gunicorn 2×4 gthread, "
                f"DEBUG=0; machine: {os.cpu_count()} CPUs shared, load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            result = run_load(port, sessions, max_rounds=args.tasks * 2)
            from django.db import connection

            connection.close()
            ok = report(result, args.k, check_database(args.k))
            print("OK" if ok else "FAILED", flush=True)
            return 0 if ok else 1
        finally:
            stop_server(server)


if __name__ == "__main__":
    sys.exit(main())
