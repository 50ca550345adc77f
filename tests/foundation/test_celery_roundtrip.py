from __future__ import annotations

import os
import re

import pytest

from config.celery import app, queue_name, route_task


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_ping_sent_from_the_web_is_executed_by_the_separate_worker_process(
    celery_worker_process, admin_client, wait_for
):
    response = admin_client.post("/ops/ping/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    task_id = re.search(rb'data-task-id="([^"]+)"', response.content).group(1).decode()

    def finished():
        r = admin_client.get(f"/ops/ping/{task_id}/", HTTP_HX_REQUEST="true")
        return r if r.status_code == 286 else None

    final = wait_for(finished, timeout=30, message="the ping result")
    assert b'data-done="true"' in final.content
    assert b"SUCCESS" in final.content
    # The worker is a separate process: its pid is the worker's (or its pool child's), never ours.
    worker_pid = int(re.search(rb"pid (\d+)", final.content).group(1))
    assert worker_pid != os.getpid()


def test_tasks_are_routed_to_the_gpu_queue_by_name():
    assert route_task("gallery.generate_images", (), {}, {}) == {"queue": queue_name("gpu")}
    assert route_task("training.round_run_stage", (), {}, {}) == {"queue": queue_name("gpu")}
    assert route_task("annotation.recompute_consensus", (), {}, {}) == {"queue": queue_name("default")}


def test_queue_names_carry_the_run_prefix_so_a_demo_worker_never_takes_test_tasks():
    prefix = os.environ["CELERY_QUEUE_PREFIX"]
    assert prefix.startswith("test")
    assert {q.name for q in app.conf.task_queues} == {f"{prefix}default", f"{prefix}gpu"}


def test_default_queue_tasks_get_the_short_time_limit():
    from django.conf import settings

    limits = app.conf.task_annotations[0].annotate(app.tasks["studio.ping"])
    assert limits["soft_time_limit"] == settings.CELERY_DEFAULT_SOFT_TIME_LIMIT_S
    assert limits["time_limit"] > limits["soft_time_limit"]
