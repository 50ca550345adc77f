from __future__ import annotations

from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "annotation"
    verbose_name = "Annotation"

    def ready(self) -> None:
        from annotation.services.export import EXPORT_JOBS
        from jobs.registry import job_kind_register

        job_kind_register(EXPORT_JOBS)
