"""One lifecycle for every background job: enqueue, claim, heartbeat, finish, fail, and one reconciler.

PostgreSQL is the source of truth and Redis keeps nothing on disk, so a job's row says all there is to
know: who holds it, when it last said it is alive, when its message was last handed to the broker, how
often it was claimed and why it failed. Every worker-side write is a conditional UPDATE that must touch
exactly one row, so a duplicated or redelivered message finds nothing to claim and does nothing, and a
worker that lost its claim can no longer write.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from jobs.models import JobStatus
from jobs.registry import JobKind, job_kinds

logger = logging.getLogger(__name__)

ERROR_MAX_CHARS = 5000


def worker_identity(delivery_id: str | None) -> str:
    """Names the holder of a claim: one delivery of a message in one worker process."""
    return f"{socket.gethostname()}/{os.getpid()}/{delivery_id or '-'}"


def _stale_before(kind: JobKind, now: datetime) -> datetime:
    return now - timedelta(seconds=kind.stale_after_s())


def _silent(kind: JobKind, now: datetime) -> Q:
    return Q(heartbeat_at__lt=_stale_before(kind, now)) | Q(heartbeat_at__isnull=True)


def job_enqueue(kind: JobKind, *, job: Any) -> None:
    """Hand the job's task to the broker once the caller's transaction commits, and note when."""
    kind.model.objects.filter(pk=job.pk).update(enqueued_at=timezone.now())
    args = kind.task_args(job)
    transaction.on_commit(lambda: current_app.send_task(kind.task, args=args))


@transaction.atomic
def job_claim(kind: JobKind, *, pk: int, worker: str, where: Q | None = None, **changes: Any) -> bool:
    """Take a waiting job (or, where the kind allows, one whose holder went silent) for ``worker``.

    ``where`` narrows what may be claimed (a round's stage and iteration); ``changes`` are written with
    the claim. True only for the one caller whose UPDATE touched the row.
    """
    now = timezone.now()
    claimable = kind.waiting
    if kind.reclaim_stale:
        claimable = claimable | (kind.held & _silent(kind, now))
    fields: dict[str, Any] = {
        "claimed_by": worker,
        "heartbeat_at": now,
        "attempts": F("attempts") + 1,
        "error": "",
        "started_at": Coalesce(F("started_at"), Value(now)),
    }
    if kind.claimed_status is not None:
        fields["status"] = kind.claimed_status
    rows = kind.model.objects.filter(claimable, where or Q(), pk=pk)
    return rows.update(**fields, **changes) == 1


@transaction.atomic
def job_heartbeat(kind: JobKind, *, pk: int, worker: str, where: Q | None = None, **changes: Any) -> bool:
    """Say the job is alive (and write ``changes``, e.g. progress); False: ``worker`` no longer holds it."""
    rows = kind.model.objects.filter(kind.held, where or Q(), pk=pk, claimed_by=worker)
    return rows.update(heartbeat_at=timezone.now(), **changes) == 1


@transaction.atomic
def job_finish(kind: JobKind, *, pk: int, worker: str, **changes: Any) -> bool:
    """The holder is done; False when it had lost the job to another worker meanwhile."""
    now = timezone.now()
    rows = kind.model.objects.filter(kind.held, pk=pk, claimed_by=worker)
    return rows.update(status=JobStatus.DONE, heartbeat_at=now, finished_at=now, **changes) == 1


@transaction.atomic
def job_fail(
    kind: JobKind, *, pk: int, reason: str, worker: str | None = None, where: Q | None = None, **changes: Any
) -> bool:
    """Fail a job that has not finished, with the reason; with ``worker``, only while it holds the job."""
    rows = kind.model.objects.filter(where or Q(), pk=pk, finished_at__isnull=True)
    if worker is not None:
        rows = rows.filter(claimed_by=worker)
    updated = rows.update(
        status=JobStatus.FAILED, error=reason[:ERROR_MAX_CHARS], finished_at=timezone.now(), **changes
    )
    return updated == 1


@transaction.atomic
def job_release(
    kind: JobKind, *, pk: int, worker: str | None = None, where: Q | None = None, **changes: Any
) -> bool:
    """Give the claim back so the job can be claimed again (a stage finished, or its worker was lost)."""
    rows = kind.model.objects.filter(where or Q(), pk=pk).exclude(claimed_by="")
    if worker is not None:
        rows = rows.filter(claimed_by=worker)
    return rows.update(claimed_by="", heartbeat_at=None, **changes) == 1


def _note(kind: JobKind, pk: int, message: str) -> None:
    logger.warning("%s %s: %s", kind.name, pk, message)
    if kind.note is not None:
        kind.note(pk, message)


@transaction.atomic
def job_kind_reconcile(kind: JobKind, *, now: datetime | None = None) -> dict[str, list[int]]:
    """Re-send what the broker lost and what lost its worker; give up on a job after its last loss.

    * waiting and not handed to the broker for RECONCILE_AFTER_S: its message may have gone with a Redis
      restart (a job merely waiting behind others is re-sent too; the claim lets one delivery run);
    * held but silent for the kind's stale-after: its worker died. While the job has been claimed fewer
      than ``max_losses`` times it is re-sent; after that it is given up on, with the reason.
    """
    now = now or timezone.now()
    resend_before = now - timedelta(seconds=settings.RECONCILE_AFTER_S)
    report: dict[str, list[int]] = {"resent": [], "lost": [], "given_up": []}
    overdue = Q(enqueued_at__lt=resend_before) | Q(enqueued_at__isnull=True)
    waiting = kind.model.objects.filter(kind.waiting, overdue)
    for job in waiting.select_for_update(skip_locked=True).order_by("pk"):
        _note(kind, job.pk, "re-sent to the broker by the reconciler")
        job_enqueue(kind, job=job)
        report["resent"].append(job.pk)

    lost = kind.model.objects.filter(kind.held, _silent(kind, now))
    if kind.given_up is not None:
        lost = lost.exclude(kind.given_up)
    for job in lost.select_for_update(skip_locked=True).order_by("pk"):
        report["lost"].append(job.pk)
        silence = f"no heartbeat from {job.claimed_by or 'its worker'} since {_clock(job.heartbeat_at)}"
        if job.attempts >= kind.max_losses():
            times = "time" if job.attempts == 1 else "times"
            reason = f"worker lost: claimed {job.attempts} {times} and never finished ({silence})"
            _note(kind, job.pk, reason)
            if kind.give_up is not None:
                kind.give_up(job, reason)
            else:
                job_fail(kind, pk=job.pk, reason=reason)
            report["given_up"].append(job.pk)
            continue
        _note(kind, job.pk, f"lost its worker ({silence}); re-sent (attempt {job.attempts + 1})")
        if kind.resend_lost is not None:
            kind.resend_lost(job)
        else:
            job_enqueue(kind, job=job)
        report["resent"].append(job.pk)
    return report


def _clock(moment: datetime | None) -> str:
    return "its claim" if moment is None else f"{timezone.localtime(moment):%H:%M:%S}"


def jobs_reconcile(*, now: datetime | None = None) -> dict[str, dict[str, list[int]]]:
    """The beat task's work: every registered kind, each in its own transaction."""
    return {kind.name: job_kind_reconcile(kind, now=now) for kind in job_kinds()}
