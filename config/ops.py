"""Health of the moving parts (database, broker, workers), for admins and load balancers."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.db import connection, transaction

from config.celery import app, queue_name


@dataclass(frozen=True)
class QueueDepth:
    name: str
    length: int | str


def database_status() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure is the answer here
        return f"down ({exc.__class__.__name__})"
    return "ok"


def broker_status_and_queues() -> tuple[str, list[QueueDepth]]:
    names = [queue_name("default"), queue_name("gpu")]
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            client = conn.default_channel.client
            depths = [QueueDepth(name, int(client.llen(name))) for name in names]
    except Exception as exc:
        return f"down ({exc.__class__.__name__})", [QueueDepth(n, "?") for n in names]
    return "ok", depths


def health_snapshot() -> dict[str, object]:
    broker, queues = broker_status_and_queues()
    return {"database": database_status(), "broker": broker, "queues": queues}


@transaction.atomic
def ping_send() -> str:
    """Send the health-check task once the surrounding transaction commits; return its id."""
    from celery import uuid

    task_id = uuid()
    sent_at = time.time()
    transaction.on_commit(lambda: app.send_task("studio.ping", args=[sent_at], task_id=task_id))
    return task_id


def ping_result(task_id: str) -> dict[str, object]:
    from django_celery_results.models import TaskResult

    row = TaskResult.objects.filter(task_id=task_id).first()
    if row is None or row.status not in ("SUCCESS", "FAILURE"):
        return {"task_id": task_id, "done": False, "status": row.status if row else "PENDING"}
    import json

    result = json.loads(row.result) if row.result else None
    return {"task_id": task_id, "done": True, "status": row.status, "result": result}
