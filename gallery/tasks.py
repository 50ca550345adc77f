"""Thin Celery wrappers of gallery services. `gallery.generate_*` routes to the `gpu` queue by name."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="gallery.generate_images", bind=True)
def generate_images(self, job_id: int) -> str:
    from gallery.services.generation import generation_job_run
    from jobs.services import worker_identity

    return generation_job_run(job_id=job_id, worker=worker_identity(self.request.id))
