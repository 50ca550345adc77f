"""Hosts simulated on one machine: an S3-compatible server on loopback (moto's standalone server, over HTTP)
and Celery workers that share nothing on disk with the web process or with each other."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, WorkerProcess, _database_url_for

# Every multi-host test: a real worker (celery) on a live database that other processes must see.
MULTIHOST_MARKS = [
    pytest.mark.multihost,
    pytest.mark.celery,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

S3_REGION = "us-east-1"
S3_KEY, S3_SECRET = "multihost-key", "multihost-secret"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """moto's standalone server in its own process, reached only over HTTP like MinIO or R2 would be."""
    port = _free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.time() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_REGION,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
    )


def bucket_keys(endpoint: str, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket with its bytes (the buckets here are small)."""
    client = s3_client(endpoint)
    keys: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            keys[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return keys


def object_versions(endpoint: str, bucket: str, prefix: str = "") -> dict[str, int]:
    """How many times each key was written (the buckets here are versioned; a delete marker is no write)."""
    client = s3_client(endpoint)
    counts: dict[str, int] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Versions", []):
            counts[item["Key"]] = counts.get(item["Key"], 0) + 1
    return counts


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


class Host:
    """One simulated machine: its own working directory, MEDIA_ROOT and WORKER_CACHE_DIR."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root / name
        self.cwd = self.root / "cwd"
        self.media = self.root / "media"
        self.cache = self.root / "cache"
        for path in (self.cwd, self.media, self.cache):
            path.mkdir(parents=True, exist_ok=True)

    def wipe_cache(self) -> None:
        """The machine comes back with an empty disk cache (a new instance, a cleaned volume)."""
        shutil.rmtree(self.cache)
        self.cache.mkdir()


@pytest.fixture
def object_storage(s3_endpoint, settings, tmp_path):
    """The web process (this test process) on a fresh bucket, with its own host folders and queues.

    Its own queue prefix: the suite's shared worker (filesystem storage) must never take these tasks.
    """
    bucket = f"itercomp-{uuid.uuid4().hex[:12]}"
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=bucket)
    # Versioned, so a test can count how often each key was written (object_versions).
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    web = Host(tmp_path, "web")
    settings.STORAGE_BACKEND = "s3"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": bucket,
                "endpoint_url": s3_endpoint,
                "region_name": S3_REGION,
                "access_key": S3_KEY,
                "secret_key": S3_SECRET,
                "default_acl": None,
                "file_overwrite": False,
                "querystring_auth": True,
            },
        },
    }
    settings.MEDIA_ROOT = web.media
    settings.WORKER_CACHE_DIR = web.cache
    settings.CELERY_QUEUE_PREFIX = f"mh{os.getpid()}-{uuid.uuid4().hex[:6]}-"
    return {"endpoint": s3_endpoint, "bucket": bucket, "web": web, "root": tmp_path}


@pytest.fixture
def start_worker(object_storage, django_db_blocker, settings):
    """Start a Celery worker as another machine would run it: the README's environment, nothing shared."""
    from django.db import connection

    from config.celery import queue_name

    workers: list[WorkerProcess] = []

    def _start(name: str, queues: tuple[str, ...] = ("default", "gpu")) -> tuple[WorkerProcess, Host]:
        host = Host(object_storage["root"], name)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": _database_url_for(connection.settings_dict["NAME"]),
            "DATABASE_TEST_NAME": "",
            "CELERY_QUEUE_PREFIX": settings.CELERY_QUEUE_PREFIX,
            "STORAGE_BACKEND": "s3",
            "S3_BUCKET": object_storage["bucket"],
            "S3_ENDPOINT_URL": object_storage["endpoint"],
            "S3_REGION": S3_REGION,
            "S3_ACCESS_KEY_ID": S3_KEY,
            "S3_SECRET_ACCESS_KEY": S3_SECRET,
            "MEDIA_ROOT": str(host.media),
            "WORKER_CACHE_DIR": str(host.cache),
        }
        worker = WorkerProcess(
            env, ",".join(queue_name(q) for q in queues), host.root / "worker.log", cwd=host.cwd
        )
        worker.start(timeout=180)
        workers.append(worker)
        return worker, host

    yield _start
    for worker in workers:
        worker.stop()
