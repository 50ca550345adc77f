"""The kinds of background job the reconciler looks after; each app registers its own in ``ready()``.

``jobs`` knows no app: a kind says which model holds its rows, which Celery task runs one, how long a
worker may stay silent before the job counts as lost, and how many lost workers it survives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import models
from django.db.models import Q

from jobs.models import JobStatus

# A job whose workers died this many times is failed with the reason instead of being tried forever.
DEFAULT_MAX_LOSSES = 3


def _pk_only(job: Any) -> tuple:
    return (job.pk,)


def _default_max_losses() -> int:
    return DEFAULT_MAX_LOSSES


@dataclass(frozen=True)
class JobKind:
    """How the shared lifecycle treats one kind of job.

    ``waiting`` and ``held`` select the rows that wait for a worker and the rows a worker holds; the
    defaults fit a model with a :class:`JobStatus` status. A kind whose rows go through several stages (a
    training round) spells them out, sets ``claimed_status=None`` (the claimer names the stage) and
    ``reclaim_stale=False`` (a lost stage is handed back through ``resend_lost``, not grabbed by whichever
    redelivered message comes first), and may replace failing by ``give_up`` (a round waits for its admin).
    """

    name: str
    model: type[models.Model]
    task: str  # the Celery task that runs one job, sent as task(*task_args(job))
    stale_after_s: Callable[[], float]  # silence after which the holder counts as lost (read lazily)
    task_args: Callable[[Any], tuple] = _pk_only
    max_losses: Callable[[], int] = _default_max_losses
    waiting: Q = field(default_factory=lambda: Q(status=JobStatus.QUEUED))
    held: Q = field(default_factory=lambda: Q(status=JobStatus.RUNNING))
    claimed_status: str | None = JobStatus.RUNNING
    reclaim_stale: bool = True
    # Hooks for a kind with more to do than re-sending or failing (each runs inside the reconciler's
    # transaction): re-send a lost job; give up on one (default: fail it with the reason); rows already
    # given up on that stay held; record a line in the job's own log.
    resend_lost: Callable[[Any], None] | None = None
    give_up: Callable[[Any, str], None] | None = None
    given_up: Q | None = None
    note: Callable[[int, str], None] | None = None


_KINDS: dict[str, JobKind] = {}


def job_kind_register(kind: JobKind) -> JobKind:
    existing = _KINDS.get(kind.name)
    if existing is not None and existing is not kind:
        raise ValueError(f"a job kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def job_kinds() -> list[JobKind]:
    return list(_KINDS.values())
