"""Browser tests: the fixtures live in tests/browser/fixtures.py (a plugin of the whole suite)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # These tests create many accounts; the production hasher's deliberate slowness only costs CPU here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
