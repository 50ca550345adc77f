"""The Celery app: two queues (`default`, `gpu`), routed by task name, results in PostgreSQL.

Queue names carry CELERY_QUEUE_PREFIX so a test run and a demo sharing one Redis never take
each other's tasks.
"""

from __future__ import annotations

import os
import socket
import time

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("itercomp_studio")
app.config_from_object("django.conf:settings", namespace="CELERY")

# Tasks that need the accelerator. Everything else runs on the default queue.
GPU_TASK_PREFIXES = ("gallery.generate_", "training.round_")


def queue_name(kind: str) -> str:
    from django.conf import settings

    if kind not in ("default", "gpu"):
        raise ValueError(f"unknown queue kind {kind!r}")
    return f"{settings.CELERY_QUEUE_PREFIX}{kind}"


def route_task(name: str, args, kwargs, options, task=None, **kw) -> dict[str, str]:
    kind = "gpu" if name.startswith(GPU_TASK_PREFIXES) else "default"
    return {"queue": queue_name(kind)}


@app.on_after_configure.connect
def _configure(sender: Celery, **kwargs: object) -> None:
    # Runs once, lazily, when the configuration is first read (Django settings are loaded by then).
    from django.conf import settings

    default_q, gpu_q = queue_name("default"), queue_name("gpu")
    sender.conf.task_default_queue = default_q
    sender.conf.task_queues = (Queue(default_q), Queue(gpu_q))
    sender.conf.task_routes = (route_task,)
    # Time limits per queue: short for web-facing work, hours for training stages.
    soft_default = settings.CELERY_DEFAULT_SOFT_TIME_LIMIT_S
    soft_gpu = settings.CELERY_GPU_SOFT_TIME_LIMIT_S
    sender.conf.task_annotations = [_LimitsByQueue(soft_default, soft_gpu)]
    sender.conf.beat_schedule = {
        # Every kind of background job (exports, generation, round stages): re-send what the broker lost
        # or what lost its worker, fail or hold what lost too many (jobs.services.jobs_reconcile).
        "jobs-reconcile": {"task": "jobs.reconcile", "schedule": 60.0},
        "training-advance-ranked-rounds": {"task": "training.advance_ranked_rounds", "schedule": 60.0},
    }


class _LimitsByQueue:
    def __init__(self, soft_default: int, soft_gpu: int) -> None:
        self.soft_default = soft_default
        self.soft_gpu = soft_gpu

    def annotate(self, task):
        soft = self.soft_gpu if task.name.startswith(GPU_TASK_PREFIXES) else self.soft_default
        return {"soft_time_limit": soft, "time_limit": soft + 60}


app.autodiscover_tasks()


@app.task(name="studio.ping")
def ping(sent_at: float) -> dict[str, object]:
    """Health check: proves a worker process took a task from the broker and wrote a result."""
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "latency_ms": round((time.time() - sent_at) * 1000, 2),
    }
