from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, _database_url_for


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Many users per test: PBKDF2 costs ~0.5 s each on the shared 2-core machine and tests nothing here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def test_db_env():
    """The environment of a separate process (a worker, a script) working on this run's test database."""
    from django.db import connection

    return {
        **os.environ,
        "DATABASE_URL": _database_url_for(connection.settings_dict["NAME"]),
        "DATABASE_TEST_NAME": "",
    }


@pytest.fixture
def django_script(test_db_env):
    """Run Python in a fresh Django process (its own broker connection); returns what it prints as JSON."""

    def run(code: str, **env: str) -> object:
        prelude = "import django, json; django.setup()\n"
        done = subprocess.run(
            [sys.executable, "-c", prelude + code],
            cwd=ROOT,
            env={**test_db_env, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run
