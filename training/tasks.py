"""Thin Celery wrappers: pass ids, call a service. Stage tasks route to the `gpu` queue by name.

Lost and stale stages are looked after by the shared beat task ``jobs.reconcile``.
"""

from __future__ import annotations

from celery import shared_task


@shared_task(name="training.round_run_stage", bind=True)
def round_run_stage(self, round_id: int, stage: str, iteration: int) -> str:
    from jobs.services import worker_identity
    from training.runner import run_stage

    return run_stage(
        round_id=round_id, stage=stage, iteration=iteration, worker=worker_identity(self.request.id)
    )


@shared_task(name="training.advance_ranked_rounds")
def advance_ranked_rounds() -> list[int]:
    """Rounds awaiting human ranking whose pushed tasks are all ranked start their next iteration."""
    from training.services import round_check_awaiting

    return round_check_awaiting()
