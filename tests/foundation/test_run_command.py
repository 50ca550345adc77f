"""The README's run command, end to end, on embedded PostgreSQL and embedded Redis in a scratch folder."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Browser:
    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def post(self, path: str, data: dict[str, str], csrf_from: str) -> tuple[int, str]:
        _, page = self.get(csrf_from)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        body = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": token}).encode()
        request = urllib.request.Request(
            self.base + path, data=body, headers={"Referer": self.base + csrf_from}
        )
        with self.opener.open(request, timeout=10) as response:
            return response.status, response.read().decode()


def test_run_command_brings_up_web_worker_and_embedded_servers(tmp_path):
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "CELERY_", "SECURE_", "DJANGO_"))
    }
    env.update(
        {
            "STUDIO_VAR": str(tmp_path / "var"),
            "STUDIO_PORT": str(port),
            "STUDIO_EMBEDDED_REDIS": "1",
            "DEBUG": "1",
            "MEDIA_ROOT": str(tmp_path / "media"),
        }
    )
    env.pop("SECRET_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "scripts/studio.py", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if "IterComp Studio is up" in line:
                break
        text = "".join(output)
        assert "IterComp Studio is up" in text, text
        assert "embedded PostgreSQL running" in text and "embedded Redis running" in text
        password = re.search(r"admin\s+admin\s+password: (\S+)", text).group(1)

        browser = Browser(f"http://127.0.0.1:{port}")
        status = None
        for _ in range(100):  # gunicorn needs a moment to bind
            try:
                status, page = browser.get("/accounts/login/")
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200 and "Log in" in page

        browser.post(
            "/accounts/login/", {"username": "admin", "password": password}, csrf_from="/accounts/login/"
        )
        _, page = browser.post("/ops/ping/", {}, csrf_from="/ops/health/")
        task_id = re.search(r'data-task-id="([^"]+)"', page).group(1)
        done = ""
        for _ in range(150):
            status, done = browser.get(f"/ops/ping/{task_id}/")
            if 'data-done="true"' in done:
                break
            time.sleep(0.2)
        assert 'data-done="true"' in done and "SUCCESS" in done
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    assert proc.returncode == 0, "".join(output) + rest
    assert "stopped" in rest
    # The embedded PostgreSQL stopped with its last holder.
    assert not (tmp_path / "var" / "pg" / "postmaster.pid").exists()
    # Every child (gunicorn's master and workers, Celery) is gone: the port can be bound again at once.
    assert _port_is_free(port)


def _port_is_free(port: int) -> bool:
    """Whether a server could listen on the port now: SO_REUSEADDR as gunicorn sets it, so connections left
    in TIME_WAIT by the test's own requests do not count, while a process still listening does."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _load_studio():
    import importlib.util

    spec = importlib.util.spec_from_file_location("studio_script", ROOT / "scripts" / "studio.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stop_kills_a_gunicorn_whose_workers_ignore_sigterm_and_frees_the_port(tmp_path):
    """What the issue saw: Ctrl-C left gunicorn workers alive on the port. Here the workers ignore SIGTERM
    on purpose; the run command's stop (process group, bounded wait, SIGKILL) still frees the port."""
    studio = _load_studio()
    (tmp_path / "app.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n"
    )
    (tmp_path / "stubborn.py").write_text(
        "import signal\n"
        "def post_worker_init(worker):\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    signal.signal(signal.SIGQUIT, signal.SIG_IGN)\n"
        "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    )
    port = _free_port()
    gunicorn = Path(sys.executable).parent / "gunicorn"
    child = studio.start_child(
        [
            str(gunicorn),
            "app:app",
            "-c",
            "stubborn.py",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "2",
            "--graceful-timeout",
            "60",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while _port_is_free(port):
        assert time.monotonic() < deadline and child.poll() is None, "gunicorn did not start"
        time.sleep(0.2)
    time.sleep(1.0)  # the workers have run post_worker_init
    started = time.monotonic()
    killed = studio.stop_children([child], grace_s=2.0)
    assert killed == [child.pid]  # the SIGTERM was ignored, so the group had to be killed
    assert time.monotonic() - started < 10
    assert child.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(child.pid, 0)
    assert _port_is_free(port)
