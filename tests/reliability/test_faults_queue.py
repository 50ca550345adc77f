"""Faults around the broker and the workers: the database is the source of truth.

* Redis (no persistence) restarted while a round and an export are queued: their messages are gone, the
  reconciler beat task (jobs.reconcile) sends them again from the rows, and a worker on the restarted
  broker finishes the export.
* A worker killed (SIGKILL, process group) in the middle of an export: the job stays "running" until its
  heartbeat is older than the hard time limit, then the reconciler re-sends it and a new worker claims it
  again and finishes; a job whose workers keep dying is failed with the reason.
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from annotation.models import ExportJob, PreferencePair
from annotation.services.export import EXPORT_JOBS, ExportSpec, export_job_create
from jobs.models import JobStatus
from jobs.services import job_kind_reconcile
from tests.conftest import ROOT, WorkerProcess
from tests.reliability.servers import EmbeddedRedis
from training.models import TrainingRound

pytestmark = pytest.mark.django_db(transaction=True)

NOTHING = {"resent": [], "lost": [], "given_up": []}
RECONCILE = "from jobs.tasks import reconcile; print(json.dumps(reconcile()))"


def _aged(model, pk: int, **fields_ago: dt.timedelta) -> None:
    now = timezone.now()
    model.objects.filter(pk=pk).update(**{f: now - ago for f, ago in fields_ago.items()})


def test_redis_restart_loses_queued_work_and_the_reconciler_sends_it_again(
    make_user, django_script, test_db_env, wait_for
):
    researcher, admin = make_user("researcher"), make_user("admin")
    redis = EmbeddedRedis()
    redis.start()
    worker = None
    prefix = settings.CELERY_QUEUE_PREFIX
    try:
        ids = django_script(
            f"""
from annotation.services.export import ExportSpec, export_job_create
from django.contrib.auth import get_user_model
from gallery.models import Category
from training.services import round_create
User = get_user_model()
job = export_job_create(requested_by=User.objects.get(pk={researcher.pk}),
                        spec=ExportSpec.parse("pairs", "parquet", {{}}))
rnd = round_create(created_by=User.objects.get(pk={admin.pk}), categories=[Category.objects.get(slug="spatial")],
                   base_generator=None, iterations=1, config={{}})
print(json.dumps({{"job": job.pk, "round": rnd.pk}}))
""",
            CELERY_BROKER_URL=redis.url,
        )
        assert redis.queued(prefix + "default") == 1 and redis.queued(prefix + "gpu") == 1

        redis.restart()
        assert redis.queued(prefix) == 0, "a Redis without persistence keeps nothing over a restart"
        assert ExportJob.objects.get(pk=ids["job"]).status == JobStatus.QUEUED

        # Not yet overdue: a job may simply be waiting behind others, so nothing is re-sent.
        result = django_script(RECONCILE, CELERY_BROKER_URL=redis.url)
        assert result["export"] == result["training_round"] == NOTHING

        _aged(ExportJob, ids["job"], enqueued_at=dt.timedelta(hours=1))
        _aged(TrainingRound, ids["round"], enqueued_at=dt.timedelta(hours=1))
        result = django_script(RECONCILE, CELERY_BROKER_URL=redis.url)
        assert result["export"] == {**NOTHING, "resent": [ids["job"]]}
        assert result["training_round"] == {**NOTHING, "resent": [ids["round"]]}
        assert redis.queued(prefix + "default") == 1 and redis.queued(prefix + "gpu") == 1

        worker = WorkerProcess(
            {**test_db_env, "CELERY_BROKER_URL": redis.url},
            f"{prefix}default",
            ROOT / "var" / "log" / "test-reliability-worker.log",
        )
        worker.start()
        job = wait_for(
            lambda: ExportJob.objects.filter(pk=ids["job"], status=JobStatus.DONE).first(),
            timeout=60,
            message="the re-sent export to finish",
        )
        assert job.attempts == 1 and job.file.name
        assert redis.queued(prefix + "gpu") == 1, "the round's stage waits for a GPU worker"
    finally:
        if worker is not None:
            worker.kill()
        redis.close()


def _pair_table_lock(dsn_settings: dict) -> psycopg.Connection:
    """Hold an ACCESS EXCLUSIVE lock on the pairs table so an export blocks at its first query."""
    conn = psycopg.connect(
        dbname=dsn_settings["NAME"],
        user=dsn_settings["USER"] or None,
        password=dsn_settings["PASSWORD"] or None,
        host=dsn_settings["HOST"] or None,
        port=dsn_settings["PORT"] or None,
    )
    conn.execute(f"LOCK TABLE {PreferencePair._meta.db_table} IN ACCESS EXCLUSIVE MODE")
    return conn


def test_worker_killed_mid_export_is_retried_by_the_reconciler(make_user, celery_worker_process, wait_for):
    researcher = make_user("researcher")
    lock = _pair_table_lock(connection.settings_dict)
    try:
        job = export_job_create(requested_by=researcher, spec=ExportSpec.parse("pairs", "parquet", {}))
        wait_for(
            lambda: ExportJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING).exists(),
            timeout=30,
            message="the worker to claim the export",
        )
        celery_worker_process.kill()  # mid-export: it is blocked on the pairs table
    finally:
        lock.rollback()
        lock.close()
    try:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (JobStatus.RUNNING, 1)
        # Within the hard time limit a "running" job may still be alive: left alone.
        assert job_kind_reconcile(EXPORT_JOBS) == NOTHING
    finally:
        celery_worker_process.start()
    _aged(ExportJob, job.pk, heartbeat_at=dt.timedelta(hours=1))
    assert job_kind_reconcile(EXPORT_JOBS) == {**NOTHING, "resent": [job.pk], "lost": [job.pk]}
    job = wait_for(
        lambda: ExportJob.objects.filter(pk=job.pk, status=JobStatus.DONE).first(),
        timeout=60,
        message="the retried export to finish",
    )
    assert job.attempts == 2 and job.error == ""


def test_an_export_whose_workers_keep_dying_is_failed_with_the_reason(make_user):
    researcher = make_user("researcher")
    job = ExportJob.objects.create(
        requested_by=researcher,
        kind="pairs",
        format="parquet",
        status=JobStatus.RUNNING,
        claimed_by="gone/1/x",
        attempts=EXPORT_JOBS.max_losses(),
        enqueued_at=timezone.now(),
        started_at=timezone.now() - dt.timedelta(hours=1),
        heartbeat_at=timezone.now() - dt.timedelta(hours=1),
    )
    assert job_kind_reconcile(EXPORT_JOBS) == {**NOTHING, "lost": [job.pk], "given_up": [job.pk]}
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.finished_at
    assert "worker lost: claimed 3 times" in job.error and "gone/1/x" in job.error
