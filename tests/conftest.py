from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The browser fixtures serve every folder: an end-to-end test elsewhere may start its work in Chromium.
pytest_plugins = ["tests.browser.fixtures"]


def _database_url_for(name: str) -> str:
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


class WorkerProcess:
    """A real Celery worker in its own process group (so a test can kill -9 it with its pool children)."""

    def __init__(self, env: dict[str, str], queues: str, log_path: Path, cwd: Path = ROOT) -> None:
        # cwd: a worker "on another machine" runs from a folder of its own (the code comes via PYTHONPATH).
        self.env, self.queues, self.log_path, self.cwd = env, queues, log_path, cwd
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60) -> None:
        self._log = open(self.log_path, "ab")
        offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                self.queues,
                "--concurrency",
                "1",
                "-n",
                f"pytest-{uuid.uuid4().hex[:8]}@%h",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
            ],
            cwd=self.cwd,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                if b"ready." in handle.read():
                    return
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(
            f"Celery worker did not start; see {self.log_path}:\n{self.log_path.read_text()[-3000:]}"
        )

    def kill(self) -> None:
        """SIGKILL the worker and its pool: nothing gets to clean up, as when a machine dies."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self._log is not None:
            self._log.close()

    @contextlib.contextmanager
    def restarted_with(self, **env: str):
        """The worker restarted with extra environment (settings are read once at start, as in production),
        and restarted as before afterwards."""
        saved = self.env
        self.stop()
        self.env = {**saved, **env}
        self.start()
        try:
            yield self
        finally:
            self.stop()
            self.env = saved
            self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker):
    """A real Celery worker consuming this run's queues against the test database."""
    from django.db import connection

    from config.celery import queue_name

    env = {
        **os.environ,
        "DATABASE_URL": _database_url_for(connection.settings_dict["NAME"]),
        "DATABASE_TEST_NAME": "",
    }
    log_path = ROOT / "var" / "log" / "test-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_bytes(b"")
    worker = WorkerProcess(env, f"{queue_name('default')},{queue_name('gpu')}", log_path)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(autouse=True)
def _categories_seeded(request):
    """Transactional tests flush the tables, the migration-seeded categories with them: put them back."""
    names = set(request.fixturenames)
    if request.node.get_closest_marker("django_db") is None:
        if names & {"transactional_db", "live_server"}:
            request.getfixturevalue("transactional_db")
        elif "db" in names:
            request.getfixturevalue("db")
        else:
            return
    from gallery.categories import categories_ensure
    from gallery.models import Category, Subcategory

    if Category.objects.count() < 3:
        categories_ensure(Category, Subcategory)


@pytest.fixture
def wait_for():
    def _wait(predicate, timeout: float = 30.0, interval: float = 0.1, message: str = "condition"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {message}")

    return _wait


@pytest.fixture
def make_user(db):
    from annotation.services.users import user_create

    counter = {"n": 0}

    def _make(role: str = "annotator", username: str | None = None, password: str = "pw-for-tests-123", **kw):
        counter["n"] += 1
        return user_create(username=username or f"{role}{counter['n']}", role=role, password=password, **kw)

    return _make


@pytest.fixture
def admin_client(client, make_user):
    client.force_login(make_user("admin"))
    return client
