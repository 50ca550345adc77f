from __future__ import annotations

from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training"

    def ready(self) -> None:
        from jobs.registry import job_kind_register
        from training.services import ROUND_JOBS

        job_kind_register(ROUND_JOBS)
