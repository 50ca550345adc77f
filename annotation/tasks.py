"""Celery tasks of the annotation app: thin wrappers that pass ids to services."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

# A database outage is temporary: retry (2, 4, 8 … 60 s apart) instead of losing the recompute.
_DATABASE_DOWN = (OperationalError, InterfaceError)


@shared_task(
    name="annotation.recompute_consensus",
    autoretry_for=_DATABASE_DOWN,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=False,
    max_retries=10,
)
def recompute_consensus(task_id: int) -> int | None:
    from annotation.services.consensus import consensus_recompute
    from annotation.services.task_status import task_complete_if_full

    # Normally a no-op: completes a full task whose completion the web process could not write.
    task_complete_if_full(task_id=task_id)
    consensus = consensus_recompute(task_id=task_id)
    return None if consensus is None else consensus.pk


@shared_task(name="annotation.export_run", bind=True)
def export_run(self, job_id: int) -> str:
    from annotation.services.export import export_job_run
    from jobs.services import worker_identity

    return export_job_run(job_id=job_id, worker=worker_identity(self.request.id))


@shared_task(name="annotation.derive_weights")
def derive_weights() -> dict[str, float]:
    from annotation.services.gold import annotator_weights_derive

    return {str(uid): w for uid, w in annotator_weights_derive().items()}
