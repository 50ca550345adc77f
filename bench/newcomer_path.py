#!/usr/bin/env python3
"""A newcomer's path, timed: from `make run` (python3 scripts/studio.py run) to a ranked task in the browser.

    python3 bench/newcomer_path.py [--runs 2] [--var bench/out/newcomer-var]

Each run starts the run command exactly as the README says (its own var folder, so its embedded PostgreSQL
and logs are the bench's; its own Redis database so a running demo's worker takes none of its messages;
a free port), reads the demo credentials it prints, and drives Debian's Chromium (Playwright) as the
annotator: log in, open the first queue with work on /rank/, place every image by keyboard, submit, and
wait for "Ranking saved". It prints the seconds from starting the command to the saved ranking, then stops
the command (Ctrl-C, as a person would) and waits for it to exit.

"Warm machine" means the virtualenv is installed and the var folder exists from an earlier run: the first
run of a fresh var folder initialises PostgreSQL and seeds the demo, so --runs 2 reports both and the
second is the warm figure. BENCHMARKS.md "## Newcomer path" records the figures with the load.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CREDENTIAL = re.compile(r"^\s*(annotator|admin|researcher)\s+(\S+)\s+password: (\S+)\s*$")
UP = re.compile(r"IterComp Studio is up: (http://\S+/)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(var: Path) -> tuple[subprocess.Popen, dict[str, object], threading.Event]:
    env = {
        **os.environ,
        "STUDIO_VAR": str(var),
        "STUDIO_PORT": str(_free_port()),
        "CELERY_BROKER_URL": os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/7"),
    }
    env.pop("DATABASE_URL", None)  # the newcomer has none: the embedded PostgreSQL under var/pg
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "studio.py"), "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    found: dict[str, object] = {"credentials": {}, "url": None, "log": []}
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            found["log"].append(line.rstrip())
            if match := CREDENTIAL.match(line):
                found["credentials"][match.group(1)] = (match.group(2), match.group(3))
            if match := UP.search(line):
                found["url"] = match.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    return process, found, ready


def _rank_one(url: str, username: str, password: str) -> int:
    """Log in as the annotator and rank the first task of the first queue with work; returns the images."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900}, base_url=url.rstrip("/"))
        # The web server answers a moment after the command says it is up (gunicorn loads the app).
        deadline = time.monotonic() + 60
        while True:
            try:
                page.goto("/accounts/login/")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.press("#id_password", "Enter")
        page.wait_for_url(lambda u: "/accounts/login/" not in u)
        page.goto("/rank/")
        queue = page.locator("article.queue a[href^='/rank/']").first
        queue.click()
        page.wait_for_selector("form.ranker .cand", timeout=60_000)
        n = page.locator("form.ranker .cand").count()
        for label in range(1, n + 1):
            page.keyboard.press(str(label))
        page.keyboard.press("Enter")
        expect(page.locator("[data-role=correct-notice]")).to_be_visible(timeout=60_000)
        browser.close()
        return n


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--var", type=Path, default=ROOT / "bench" / "out" / "newcomer-var")
    args = parser.parse_args()
    args.var.mkdir(parents=True, exist_ok=True)
    for run in range(1, args.runs + 1):
        started = time.monotonic()
        process, found, ready = _start(args.var)
        try:
            ready.wait(timeout=900)
            if not found["url"]:
                print("\n".join(found["log"][-30:]), file=sys.stderr)
                raise SystemExit("the run command did not come up")
            up = time.monotonic() - started
            username, password = found["credentials"]["annotator"]
            images = _rank_one(found["url"], username, password)
            ranked = time.monotonic() - started
        finally:
            _stop(process)
        load = os.getloadavg()
        print(
            f"run {run}: up in {up:.1f} s, a task of {images} images ranked and saved {ranked:.1f} s after "
            f"`make run` started (load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
