from __future__ import annotations

from django.apps import AppConfig


class GalleryConfig(AppConfig):
    name = "gallery"
    verbose_name = "Gallery"

    def ready(self) -> None:
        from gallery.services.generation import GENERATION_JOBS
        from jobs.registry import job_kind_register

        job_kind_register(GENERATION_JOBS)
