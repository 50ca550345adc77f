"""The one job lifecycle (jobs.services): claim, heartbeat, the beat reconciler, giving up after N losses.

Export jobs stand in for "a job" where the kind does not matter; generation jobs are the kind the beat task
never used to look after, so their lost messages and lost workers are proven end to end on real workers.
"""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from annotation.models import ExportJob
from annotation.services.export import EXPORT_JOBS
from gallery.models import GenerationJob, Image
from gallery.services.generation import GENERATION_JOBS
from jobs.models import JobStatus
from jobs.services import job_claim, job_finish, job_heartbeat, job_kind_reconcile
from tests.conftest import ROOT, WorkerProcess
from tests.gallery.test_generation import PARAMS, _setup
from tests.reliability.servers import EmbeddedRedis

NOTHING = {"resent": [], "lost": [], "given_up": []}
RECONCILE = "from jobs.tasks import reconcile; print(json.dumps(reconcile()))"


def _ago(**delta: float) -> dt.datetime:
    return timezone.now() - dt.timedelta(**delta)


def _export(make_user, **fields) -> ExportJob:
    user = make_user("researcher", username=f"r{ExportJob.objects.count()}")
    return ExportJob.objects.create(
        requested_by=user, kind="pairs", format="parquet", enqueued_at=timezone.now(), **fields
    )


@pytest.mark.django_db(transaction=True)
def test_of_two_workers_claiming_one_job_at_once_exactly_one_wins_and_no_other_row_changes(make_user):
    job, bystander = _export(make_user), _export(make_user)
    barrier = threading.Barrier(2)
    won: dict[str, bool] = {}

    def claim(worker: str) -> None:
        try:
            barrier.wait(timeout=10)
            won[worker] = job_claim(EXPORT_JOBS, pk=job.pk, worker=worker)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(w,)) for w in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(won.values()) == [False, True]
    winner = next(w for w, ok in won.items() if ok)
    job.refresh_from_db()
    assert (job.status, job.claimed_by, job.attempts) == (JobStatus.RUNNING, winner, 1)
    assert job.heartbeat_at and job.started_at
    bystander.refresh_from_db()
    assert (bystander.status, bystander.claimed_by, bystander.attempts, bystander.heartbeat_at) == (
        JobStatus.QUEUED, "", 0, None
    )  # fmt: skip


@pytest.mark.django_db
def test_a_silent_holder_loses_its_job_to_the_next_claimer_and_can_no_longer_write(make_user):
    job = _export(make_user)
    assert job_claim(EXPORT_JOBS, pk=job.pk, worker="first")
    # While the holder heart-beats, nobody else may take the job.
    assert job_heartbeat(EXPORT_JOBS, pk=job.pk, worker="first", rows_done=5)
    assert not job_claim(EXPORT_JOBS, pk=job.pk, worker="second")
    assert job_kind_reconcile(EXPORT_JOBS) == NOTHING
    ExportJob.objects.filter(pk=job.pk).update(heartbeat_at=_ago(hours=1))
    assert job_kind_reconcile(EXPORT_JOBS) == {**NOTHING, "resent": [job.pk], "lost": [job.pk]}
    assert job_claim(EXPORT_JOBS, pk=job.pk, worker="second")
    assert not job_heartbeat(EXPORT_JOBS, pk=job.pk, worker="first")
    assert not job_finish(EXPORT_JOBS, pk=job.pk, worker="first")
    assert job_finish(EXPORT_JOBS, pk=job.pk, worker="second")
    job.refresh_from_db()
    assert (job.status, job.claimed_by, job.attempts, job.rows_done) == (JobStatus.DONE, "second", 2, 5)


@pytest.mark.django_db
def test_a_job_is_resent_after_each_lost_worker_and_failed_with_the_reason_after_the_last(tiny_weights):
    generator, prompts = _setup(str(tiny_weights), n_prompts=1)
    job = GenerationJob.objects.create(generator=generator, images_total=1, enqueued_at=timezone.now())
    job.prompts.set(prompts)
    limit = GENERATION_JOBS.max_losses()
    assert limit == 3
    for attempt in range(1, limit + 1):
        assert job_claim(GENERATION_JOBS, pk=job.pk, worker=f"doomed-{attempt}")
        GenerationJob.objects.filter(pk=job.pk).update(heartbeat_at=_ago(hours=1))
        report = job_kind_reconcile(GENERATION_JOBS)
        if attempt < limit:
            assert report == {**NOTHING, "resent": [job.pk], "lost": [job.pk]}
    assert report == {**NOTHING, "lost": [job.pk], "given_up": [job.pk]}
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.FAILED, limit) and job.finished_at
    assert job.error.startswith(f"worker lost: claimed {limit} times and never finished")
    assert "doomed-3" in job.error
    # A failed job is neither claimed by a late message nor looked at again.
    assert not job_claim(GENERATION_JOBS, pk=job.pk, worker="late")
    assert job_kind_reconcile(GENERATION_JOBS) == NOTHING


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_generation_job_whose_worker_died_is_resent_by_the_reconciler_and_finishes(
    tiny_weights, celery_worker_process, wait_for
):
    generator, prompts = _setup(str(tiny_weights), n_prompts=2)
    # What a worker killed mid-job leaves: running, claimed, one attempt, silent for an hour.
    job = GenerationJob.objects.create(
        generator=generator,
        images_total=2,
        params={**PARAMS, "height": None, "width": None, "dtype": "auto", "negative_prompt": ""},
        status=JobStatus.RUNNING,
        claimed_by="dead-host/1/x",
        attempts=1,
        enqueued_at=_ago(hours=1),
        started_at=_ago(hours=1),
        heartbeat_at=_ago(hours=1),
    )
    job.prompts.set(prompts)
    assert job_kind_reconcile(GENERATION_JOBS) == {**NOTHING, "resent": [job.pk], "lost": [job.pk]}
    job = wait_for(
        lambda: GenerationJob.objects.filter(pk=job.pk, status__in=["done", "failed"]).first(),
        timeout=90,
        interval=0.5,
        message="the re-sent generation job",
    )
    assert (job.status, job.error, job.images_done, job.attempts) == ("done", "", 2, 2)
    assert job.claimed_by != "dead-host/1/x"
    assert Image.objects.filter(generator=generator, params__job_id=job.pk).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_generation_job_whose_message_a_redis_restart_lost_is_resent_by_beat_and_finishes(
    tiny_weights, django_script, test_db_env, wait_for
):
    generator, prompts = _setup(str(tiny_weights), n_prompts=2)
    prefix = settings.CELERY_QUEUE_PREFIX
    redis = EmbeddedRedis()
    redis.start()
    worker = None
    try:
        job_id = django_script(
            f"""
from gallery.models import Generator, Prompt
from gallery.services.generation import generation_job_create
job = generation_job_create(generator=Generator.objects.get(pk={generator.pk}),
                            prompts=list(Prompt.objects.filter(pk__in={[p.pk for p in prompts]})),
                            params={PARAMS!r})
print(json.dumps(job.pk))
""",
            CELERY_BROKER_URL=redis.url,
        )
        assert redis.queued(prefix + "gpu") == 1
        redis.restart()
        assert redis.queued(prefix) == 0, "a Redis without persistence keeps nothing over a restart"

        # Not yet overdue: the job may simply be waiting behind others.
        assert django_script(RECONCILE, CELERY_BROKER_URL=redis.url)["generation"] == NOTHING
        GenerationJob.objects.filter(pk=job_id).update(enqueued_at=_ago(hours=1))
        result = django_script(RECONCILE, CELERY_BROKER_URL=redis.url)
        assert result["generation"] == {**NOTHING, "resent": [job_id]}
        assert redis.queued(prefix + "gpu") == 1

        worker = WorkerProcess(
            {**test_db_env, "CELERY_BROKER_URL": redis.url},
            f"{prefix}gpu",
            ROOT / "var" / "log" / "test-jobs-worker.log",
        )
        worker.start()
        job = wait_for(
            lambda: GenerationJob.objects.filter(pk=job_id, status__in=["done", "failed"]).first(),
            timeout=90,
            interval=0.5,
            message="the re-sent generation job",
        )
        assert (job.status, job.error, job.images_done, job.attempts) == ("done", "", 2, 1)
        assert Image.objects.filter(generator=generator, params__job_id=job_id).count() == 2
    finally:
        if worker is not None:
            worker.kill()
        redis.close()


def test_every_beat_entry_names_a_task_the_workers_know():
    from config.celery import app

    app.loader.import_default_modules()
    schedule = app.conf.beat_schedule
    assert {entry["task"] for entry in schedule.values()} >= {"jobs.reconcile"}
    for name, entry in schedule.items():
        assert entry["task"] in app.tasks, f"beat entry {name} sends unknown task {entry['task']}"
