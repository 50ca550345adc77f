"""Celery tasks of the annotation app: thin wrappers that pass ids to services."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="annotation.recompute_consensus")
def recompute_consensus(task_id: int) -> int | None:
    from annotation.services.consensus import consensus_recompute

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
