from __future__ import annotations

# The tiny SD pipeline the generation tests draw with, and separate Django processes on this run's
# database (a beat task run as a script, a worker on a broker the test owns).
from tests.gallery.test_generation import tiny_weights  # noqa: F401
from tests.reliability.conftest import django_script, test_db_env  # noqa: F401
