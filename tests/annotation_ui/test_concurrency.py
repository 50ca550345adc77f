"""Many annotators claiming at once against PostgreSQL: nobody shares a slot and no slot is lost.

Each thread has its own database connection (Django opens one per thread), so the claims really race
inside PostgreSQL — row locks, SKIP LOCKED and all.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest
from django.db import connection

from annotation.models import ClaimStatus, Ranking, RankingTask, TaskClaim
from annotation.services.claims import task_claim_next
from annotation.services.submission import ranking_submit
from gallery.models import Category
from tests.annotation_ui.conftest import make_task, rank_fields

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def _run_threads(n: int, work) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def runner(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a claimer hung"
    assert not errors, errors
    return results


def test_simultaneous_claimers_never_share_a_slot_and_fill_every_one(make_user, settings):
    settings.GOLD_TASK_RATE = 0
    tasks = [make_task(required=3) for _ in range(5)]  # 15 slots
    users = [make_user("annotator") for _ in range(24)]
    category = Category.objects.get(slug="spatial")

    claims = _run_threads(len(users), lambda i: task_claim_next(annotator=users[i], category=category))

    won = [c for c in claims if c is not None]
    assert len(won) == 15  # every slot handed out once: none shared, none lost
    per_task = Counter(c.task_id for c in won)
    assert per_task == {t.pk: 3 for t in tasks}
    assert TaskClaim.objects.filter(status=ClaimStatus.ACTIVE).count() == 15
    assert len({c.annotator_id for c in won}) == 15


def test_annotators_ranking_in_parallel_until_the_queue_is_empty_fill_every_task_exactly(
    make_user, settings, monkeypatch
):
    import annotation.services.submission as submission_module

    scheduled: list[int] = []
    monkeypatch.setattr(submission_module, "_schedule_consensus", scheduled.append)
    settings.GOLD_TASK_RATE = 0
    tasks = [make_task(required=3) for _ in range(10)]  # 30 slots, at most one per annotator per task
    users = [make_user("annotator") for _ in range(8)]
    category = Category.objects.get(slug="spatial")

    def rank_until_empty(i: int) -> int:
        done = 0
        while (claim := task_claim_next(annotator=users[i], category=category)) is not None:
            fields = {k: [v] for k, v in rank_fields(list(range(1, 7))).items()}
            ranking_submit(claim_id=claim.pk, annotator=users[i], fields=fields, idempotency_key=uuid.uuid4())
            done += 1
        return done

    counts = _run_threads(len(users), rank_until_empty)

    assert sum(counts) == 30
    per_task = Counter(Ranking.objects.values_list("task_id", flat=True))
    assert per_task == {t.pk: 3 for t in tasks}
    pairs = list(Ranking.objects.values_list("task_id", "annotator_id"))
    assert len(pairs) == len(set(pairs))
    assert not TaskClaim.objects.filter(status=ClaimStatus.ACTIVE).exists()
    assert set(RankingTask.objects.values_list("status", flat=True)) == {"complete"}
    assert Counter(scheduled) == {t.pk: 3 for t in tasks}  # consensus asked for once per ranking
