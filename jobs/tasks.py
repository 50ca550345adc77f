"""The one beat task that looks after every kind of background job."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="jobs.reconcile")
def reconcile() -> dict[str, dict[str, list[int]]]:
    from jobs.services import jobs_reconcile

    return jobs_reconcile()
