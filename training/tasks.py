"""Thin Celery wrappers: pass ids, call a service. Stage tasks route to the `gpu` queue by name."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings


@shared_task(name="training.round_run_stage", bind=True)
def round_run_stage(self, round_id: int, stage: str, iteration: int) -> str:
    from training.runner import run_stage, worker_identity

    return run_stage(
        round_id=round_id, stage=stage, iteration=iteration, worker=worker_identity(self.request.id)
    )


@shared_task(name="training.check_stale_rounds")
def check_stale_rounds() -> dict[str, list[int]]:
    from training.services import round_auto_resume, round_check_awaiting, round_mark_stale

    stale = round_mark_stale(after=timedelta(seconds=settings.ROUND_STALE_AFTER_S))
    return {"stale": stale, "resumed": round_auto_resume(), "advanced": round_check_awaiting()}


@shared_task(name="training.reconcile_queued_work")
def reconcile_queued_work() -> dict[str, list[int]]:
    # Rounds and export jobs: both live in PostgreSQL, so what a restarted Redis lost is sent again.
    from annotation.services.export import export_jobs_reconcile
    from training.services import round_reconcile

    after = timedelta(seconds=settings.RECONCILE_AFTER_S)
    exports = export_jobs_reconcile(after=after)
    return {
        "rounds": round_reconcile(after=after),
        "exports": exports["resent"],
        "exports_failed": exports["failed"],
    }
