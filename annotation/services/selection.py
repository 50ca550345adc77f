"""Active selection: each category's task-priority policy, the scores the worker measures, and the stored
priority the claim sorts by (``annotation.services.claims``: ``ORDER BY priority DESC, id``).

The maths is in :mod:`rankmath.selection`; here are the writes. A priority is derived from the task's
selection draw (fixed at creation), its scores and its category's policy, and is rewritten whenever one of
them changes: when the worker records new scores after a reward-training stage
(:func:`task_scores_record`), when an admin changes a policy (:func:`selection_policy_set`), and when a
task is created (:func:`task_selection_initial`). Claiming itself computes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from annotation.models import CategorySelection, RankingTask, SelectionPolicy, TaskStatus
from gallery.models import Category
from rankmath.selection import TaskScore, initial_priority, selection_draw, task_priorities

DEFAULT_RANDOM_SHARE = 0.2


def category_policy(category_id: int) -> tuple[str, float]:
    """(policy, random share) of a category; a category no admin configured is ``random``."""
    row = (
        CategorySelection.objects.filter(category_id=category_id)
        .values_list("policy", "random_share")
        .first()
    )
    return (row[0], row[1]) if row else (SelectionPolicy.RANDOM.value, DEFAULT_RANDOM_SHARE)


def task_selection_initial(*, prompt_id: int, category_id: int, image_ids: Sequence[int]) -> dict[str, float]:
    """The selection fields of a task about to be created: its draw, and a uniform priority under the
    category's policy until the worker scores it."""
    draw = selection_draw(prompt_id, image_ids)
    policy, share = category_policy(category_id)
    return {"selection_draw": draw, "priority": initial_priority(policy, draw, share)}


def _reprioritise(category_id: int) -> int:
    """Rewrite the priorities of the category's open tasks from their stored draws and scores."""
    policy, share = category_policy(category_id)
    rows = list(
        RankingTask.objects.filter(status=TaskStatus.OPEN, prompt__category_id=category_id).values_list(
            "pk", "selection_draw", "uncertainty", "disagreement"
        )
    )
    priorities = task_priorities(policy, [TaskScore(*row) for row in rows], share)
    tasks = [RankingTask(pk=pk, priority=value) for pk, value in priorities.items()]
    RankingTask.objects.bulk_update(tasks, ["priority"], batch_size=1000)
    return len(tasks)


@transaction.atomic
def selection_policy_set(
    *,
    category: Category,
    policy: str,
    random_share: float = DEFAULT_RANDOM_SHARE,
    user: AbstractBaseUser | None,
) -> CategorySelection:
    """An admin's choice of policy for a category; the queue is reordered at once from the stored scores."""
    if policy not in SelectionPolicy.values:
        raise ValueError(f"unknown selection policy {policy!r}")
    if not 0.0 < random_share < 1.0:
        raise ValueError("the random share must lie strictly between 0 and 1")
    row, _ = CategorySelection.objects.update_or_create(
        category=category, defaults={"policy": policy, "random_share": random_share, "updated_by": user}
    )
    _reprioritise(category.pk)
    return row


# Rows per write of the worker's scores: each batch is its own short transaction, so a claimer never waits
# on (or skips) more than this many row locks, and only for one batch's update.
SCORE_BATCH = 500


def task_scores_record(
    *,
    category_id: int,
    uncertainty: Mapping[int, float],
    disagreement: Mapping[int, float | None],
) -> int:
    """The worker's scores of a category's open tasks (task id → score), with their new priorities.

    A task missing from a mapping keeps no stale score of that kind: the scores describe the reward model
    just trained, and an older model's opinion would rank tasks by what it no longer believes. Not one
    transaction on purpose (see SCORE_BATCH): until the last batch is written, the queue mixes the new
    order with the old one, which costs nothing but a less sharp choice for a moment.
    """
    policy, share = category_policy(category_id)
    rows = list(
        RankingTask.objects.filter(status=TaskStatus.OPEN, prompt__category_id=category_id).values_list(
            "pk", "selection_draw"
        )
    )
    scores = [TaskScore(pk, draw, uncertainty.get(pk), disagreement.get(pk)) for pk, draw in rows]
    priorities = task_priorities(policy, scores, share)
    now = timezone.now()
    for start in range(0, len(scores), SCORE_BATCH):
        batch = [
            RankingTask(
                pk=t.task_id,
                uncertainty=t.uncertainty,
                disagreement=t.disagreement,
                scored_at=now,
                priority=priorities[t.task_id],
            )
            for t in scores[start : start + SCORE_BATCH]
        ]
        with transaction.atomic():
            RankingTask.objects.bulk_update(batch, ["uncertainty", "disagreement", "scored_at", "priority"])
    return len(scores)
