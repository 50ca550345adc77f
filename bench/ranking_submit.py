#!/usr/bin/env python3
"""Ranking submissions against the production-style server: gunicorn, DEBUG=0, real PostgreSQL, loopback.

    .venv/bin/python bench/ranking_submit.py [--clients 20] [--per-client 20] [--rate 50] [--seconds 10]

Sets up its own database (bench_ranking_<pid>, dropped at the end), migrates it, seeds annotators with
sessions, tasks and one active claim per submission to come, starts gunicorn with the run command's
settings (2 workers × 4 threads, gthread), then measures:

  (a) saturated throughput: C concurrent clients × S submissions each, every client on its own keep-alive
      connection, as fast as the server answers;
  (b) latency at an open-loop offered load of R submissions/s for T seconds (sends are scheduled on a clock,
      latency counts from the scheduled time, so a slow server cannot slow the offered load down);
  (c) SQL statements per submit, counted in-process with CaptureQueriesContext against the same database.

Each submission is the browser's: a form POST with session cookie and CSRF token, answered by 303 to the
next task. Celery messages for consensus go to a throw-away queue on the local Redis, deleted at the end.
Counts and time are bounded (about a minute in all). Prints figures; BENCHMARKS.md "## Ranking" has them.
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
N_IMAGES = 6


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# --------------------------------------------------------------------------------------------------------
# Setup (runs in this process after django.setup(), against the bench database)
# --------------------------------------------------------------------------------------------------------


def seed(n_users: int, n_tasks: int) -> list[dict]:
    """Annotators with a session each, tasks of six images, and a claim for every (user, task) pair."""
    from datetime import timedelta

    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.utils import timezone

    from annotation.models import AnnotatorProfile, RankingTask, TaskClaim, TaskImage
    from gallery.models import Category, Generator, Image
    from gallery.services import prompt_ensure

    User = get_user_model()
    category = Category.objects.get(slug="spatial")
    generators = [
        Generator.objects.create(name=f"bench-gen-{i}", slug=f"bench-gen-{i}") for i in range(N_IMAGES)
    ]
    tasks = []
    for t in range(n_tasks):
        prompt, _ = prompt_ensure(text=f"bench prompt {t}: a red cube left of a blue ball", category=category)
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
        # Enough slots that every bench annotator can rank every task once.
        task = RankingTask.objects.create(prompt=prompt, required_rankings=n_users + 1)
        TaskImage.objects.bulk_create(
            TaskImage(task=task, image=im, position=i) for i, im in enumerate(images)
        )
        tasks.append((task, [im.pk for im in images]))
    # Unusable passwords: the bench authenticates with sessions, never with passwords.
    users = User.objects.bulk_create(User(username=f"bench{u}", password="!") for u in range(n_users))
    AnnotatorProfile.objects.bulk_create(AnnotatorProfile(user=u, role="annotator") for u in users)
    expires = timezone.now() + timedelta(hours=2)
    claims = TaskClaim.objects.bulk_create(
        TaskClaim(task=task, annotator=user, shown_order=list(reversed(ids)), expires_at=expires)
        for user in users
        for task, ids in tasks
    )
    sessions = {}
    for user in users:
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.save()
        sessions[user.pk] = store.session_key
    return [
        {"claim": c.pk, "task": c.task_id, "user": c.annotator_id, "session": sessions[c.annotator_id]}
        for c in claims
    ]


# --------------------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------------------


class Submitter:
    """One keep-alive connection; posts the browser's ranking form."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path: str) -> tuple[int, float]:
        start = time.perf_counter()
        self.conn.request("GET", path, headers={"Host": "127.0.0.1"})
        response = self.conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - start

    def submit(self, job: dict) -> tuple[int, float]:
        csrf = secrets.token_hex(16)  # 32 characters: the cookie secret, echoed in the header
        order = list(range(1, N_IMAGES + 1))
        body = urlencode(
            {
                "task": job["task"],
                "idempotency_key": str(uuid.uuid4()),
                "shown_at": str(int(time.time() * 1000) - 9000),
                **{f"rank_{label}": str(pos) for pos, label in enumerate(order, start=1)},
            }
        )
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"sessionid={job['session']}; csrftoken={csrf}",
            "X-CSRFToken": csrf,
            "Host": "127.0.0.1",
        }
        start = time.perf_counter()
        for attempt in range(2):
            try:
                self.conn.request("POST", f"/rank/claims/{job['claim']}/submit/", body=body, headers=headers)
                response = self.conn.getresponse()
                response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                return response.status, time.perf_counter() - start
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt:
                    raise
        raise RuntimeError("unreachable")


def saturated(port: int, jobs: list[dict], clients: int, per_client: int) -> dict:
    chunks = [jobs[i * per_client : (i + 1) * per_client] for i in range(clients)]
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def run(chunk: list[dict]) -> None:
        client = Submitter(port)
        barrier.wait()
        mine = [client.submit(job) for job in chunk]
        with lock:
            statuses.extend(s for s, _ in mine)
            latencies.extend(t for _, t in mine)

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"n": len(latencies), "wall": wall, "latencies": latencies, "statuses": statuses}


def baseline(port: int, clients: int, per_client: int) -> dict:
    """The same server and clients on GET /healthz (one query, no session): what this machine allows now."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def run() -> None:
        client = Submitter(port)
        barrier.wait()
        mine = [client.get("/healthz")[1] for _ in range(per_client)]
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"n": len(latencies), "wall": wall, "latencies": latencies, "statuses": [303] * len(latencies)}


def open_loop(port: int, jobs: list[dict], rate: float, pool: int = 48) -> dict:
    """Send job i at t0 + i/rate, whatever happened to earlier ones; latency from the scheduled time."""
    latencies: list[float] = [0.0] * len(jobs)
    statuses: list[int] = [0] * len(jobs)
    late_starts: list[float] = [0.0] * len(jobs)
    next_index = iter(range(len(jobs)))
    lock = threading.Lock()
    t0 = time.perf_counter() + 0.5

    def worker() -> None:
        client = Submitter(port)
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            late_starts[i] = max(0.0, time.perf_counter() - due)
            status, _ = client.submit(jobs[i])
            statuses[i] = status
            latencies[i] = time.perf_counter() - due

    threads = [threading.Thread(target=worker) for _ in range(pool)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"n": len(jobs), "wall": wall, "latencies": latencies, "statuses": statuses, "late": late_starts}


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children (gunicorn's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def summary(name: str, result: dict) -> None:
    lat_ms = [x * 1000 for x in result["latencies"]]
    bad = [s for s in result["statuses"] if s != 303]
    print(
        f"{name}: n={result['n']} wall={result['wall']:.2f}s throughput={result['n'] / result['wall']:.1f}/s "
        f"p50={percentile(lat_ms, 0.5):.1f}ms p90={percentile(lat_ms, 0.9):.1f}ms "
        f"p99={percentile(lat_ms, 0.99):.1f}ms max={max(lat_ms):.1f}ms mean={statistics.mean(lat_ms):.1f}ms "
        f"non-303={len(bad)}{' ' + str(sorted(set(bad))) if bad else ''}",
        flush=True,
    )


# --------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="repeat (a) and (b) this many times")
    args = parser.parse_args()
    args.clients = min(args.clients, 100)
    args.per_client = min(args.per_client, 100)
    args.seconds = min(args.seconds, 60)

    base_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    db_name = f"bench_ranking_{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="bench-ranking-"))
    prefix = f"bench{os.getpid()}-"
    env = {
        **os.environ,
        "DATABASE_URL": _with_db(base_url, db_name),
        "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14"),
        "CELERY_QUEUE_PREFIX": prefix,
        "DEBUG": "0",
        "SECRET_KEY": "bench-" + secrets.token_urlsafe(48),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "0",
        "SECURE_COOKIES": "0",
        "SECURE_HSTS_SECONDS": "0",
        "MEDIA_ROOT": str(work / "media"),
        "STATIC_ROOT": str(work / "static"),
        "LOG_LEVEL": "WARNING",
        "DATABASE_CONN_MAX_AGE": "60",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    import psycopg

    admin_url = _with_db(base_url, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    server: subprocess.Popen | None = None
    try:
        log(f"database {db_name}: migrating")
        subprocess.run([PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()

        n_sat = args.clients * args.per_client
        n_open = int(args.rate * args.seconds)
        per_round = n_sat + n_open
        n_tasks = 20
        total_needed = (per_round * args.repeat) + 40 + 5  # + warm-up + in-process query count
        n_users = -(-total_needed // n_tasks)
        t = time.perf_counter()
        jobs = seed(n_users=n_users, n_tasks=n_tasks)
        log(
            f"seeded {n_users} annotators × {n_tasks} tasks = {len(jobs)} claims in {time.perf_counter() - t:.1f}s"
        )
        # Interleave users so concurrent requests come from different annotators, as in real use.
        jobs.sort(key=lambda j: (j["task"], j["user"]))

        port = _free_port()
        server = subprocess.Popen(
            [
                str(Path(PY).parent / "gunicorn"),
                "config.wsgi",
                "-b",
                f"127.0.0.1:{port}",
                "-w",
                str(args.workers),
                "--threads",
                str(args.threads),
                "-k",
                "gthread",
                "--keep-alive",
                "30",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.2)
        log(
            f"gunicorn on 127.0.0.1:{port}: {args.workers} workers × {args.threads} threads (gthread), DEBUG=0"
        )

        cursor = 0

        def take(n: int) -> list[dict]:
            nonlocal cursor
            chunk = jobs[cursor : cursor + n]
            cursor += n
            return chunk

        warm = saturated(port, take(40), clients=4, per_client=10)
        summary("warm-up", warm)
        accepted = warm["statuses"].count(303)
        load = os.getloadavg()
        print(f"machine: {os.cpu_count()} CPUs, load average before measuring {load[0]:.2f} {load[1]:.2f}")
        for _ in range(args.repeat):
            summary("(0) baseline GET /healthz, same clients", baseline(port, args.clients, args.per_client))
            cpu0 = process_tree_cpu(server.pid)
            a = saturated(port, take(n_sat), clients=args.clients, per_client=args.per_client)
            summary(f"(a) saturated {args.clients} clients × {args.per_client}", a)
            print(
                f"    (a) gunicorn CPU per submit: {(process_tree_cpu(server.pid) - cpu0) / a['n'] * 1000:.2f} ms"
            )
            accepted += a["statuses"].count(303)
            b = open_loop(port, take(n_open), rate=args.rate)
            summary(f"(b) open loop {args.rate:.0f}/s for {args.seconds:.0f}s", b)
            accepted += b["statuses"].count(303)
            print(f"    (b) sends started late by >5ms: {sum(1 for x in b['late'] if x > 0.005)} of {b['n']}")
        print(f"machine load average after: {os.getloadavg()[0]:.2f}")

        # (c) statements per submit, counted inside Django against the same database.
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        from annotation.models import Ranking

        job = take(1)[0]
        client = Client(HTTP_HOST="127.0.0.1")
        client.cookies["sessionid"] = job["session"]
        data = {
            "task": job["task"],
            "idempotency_key": str(uuid.uuid4()),
            "shown_at": "0",
            **{f"rank_{k}": str(k) for k in range(1, N_IMAGES + 1)},
        }
        with CaptureQueriesContext(connection) as queries:
            response = client.post(f"/rank/claims/{job['claim']}/submit/", data)
        print(f"(c) SQL statements per submit: {len(queries)} (status {response.status_code})")
        for q in queries.captured_queries:
            print(f"      {q['sql'][:110]}")
        accepted += response.status_code == 303
        recorded = Ranking.objects.count()
        print(f"rankings recorded: {recorded}; submissions answered 303: {accepted}")
        return 0 if recorded == accepted else 1
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        try:
            import redis

            r = redis.Redis.from_url(env["CELERY_BROKER_URL"])
            for key in r.scan_iter(f"{prefix}*"):
                r.delete(key)
        except Exception as exc:  # the broker is a side effect of the app, not the measurement
            log(f"could not clean Redis queues: {exc}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
