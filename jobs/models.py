"""What every background job records of its life, whatever it computes (exports, generation, rounds).

No concrete model lives here: each app's job model inherits these fields, so the lifecycle columns sit in
the job's own table next to what the job computes, and ``jobs.services`` can claim, heartbeat and reconcile
any of them with the same conditional UPDATEs.
"""

from __future__ import annotations

from django.db import models


class JobStatus(models.TextChoices):
    """The status of a job that is one unit of work (an export, a generation batch).

    A training round runs several stages and keeps its own stage enum (``training.RoundStatus``); its
    ``failed`` and ``done`` are spelled the same so the shared fail path works on both.
    """

    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    DONE = "done", "done"
    FAILED = "failed", "failed"


class JobLifecycle(models.Model):
    """Claim, liveness and outcome of a job; written only through ``jobs.services``."""

    # Which worker holds the job (hostname/pid/delivery), and when it last said it is alive.
    claimed_by = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When the job's message was last handed to the broker; the reconciler re-sends what Redis lost.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # Claims of the job (of the current stage, for a round); each one beyond the first was a lost worker.
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class Job(JobLifecycle):
    """A job whose status is the shared :class:`JobStatus`."""

    status = models.CharField(max_length=8, choices=JobStatus.choices, default=JobStatus.QUEUED)

    class Meta:
        abstract = True
