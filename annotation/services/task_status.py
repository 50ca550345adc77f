"""The one writer of ``RankingTask.status``: every change of a task's state goes through this module.

Allowed transitions (a task is created ``open``)::

    open           -> complete  it has the rankings it asked for         task_complete, task_complete_if_full
    complete       -> open      its experts disagree: one more ranking   task_reopen
    open           -> open      the same, before it was marked complete  task_reopen
    open, complete -> retired   an admin withdrew it                     task_retire

``retired`` is final. Each function is one conditional UPDATE whose WHERE clause names the states it may
leave, so a transition that is not allowed touches no row (and returns False) instead of overwriting a
state another process just wrote. ``tests/annotation_ui/test_status_writers.py`` fails when any other
module writes the field.
"""

from __future__ import annotations

from django.db.models import OuterRef

from annotation.models import Ranking, RankingTask, TaskStatus
from annotation.services.subqueries import count_subquery

TRANSITIONS: dict[str, frozenset[str]] = {
    TaskStatus.OPEN: frozenset({TaskStatus.OPEN, TaskStatus.COMPLETE, TaskStatus.RETIRED}),
    TaskStatus.COMPLETE: frozenset({TaskStatus.OPEN, TaskStatus.RETIRED}),
    TaskStatus.RETIRED: frozenset(),
}


def _sources(target: str) -> list[str]:
    return [source for source, targets in TRANSITIONS.items() if target in targets]


def task_complete(*, task_id: int) -> bool:
    """Mark an open task complete (the caller has counted its rankings); False when it was not open."""
    return bool(
        RankingTask.objects.filter(pk=task_id, status__in=_sources(TaskStatus.COMPLETE)).update(
            status=TaskStatus.COMPLETE
        )
    )


def task_complete_if_full(*, task_id: int) -> bool:
    """Mark an open task complete when it has its ``required_rankings``, counted in the same statement.

    Run after the ranking's commit: when the last two rankings of a task commit at the same moment, each
    transaction sees only its own, but this statement starts after both commits and sees both.
    """
    ranked = Ranking.objects.filter(task_id=OuterRef("pk")).values("task")
    return bool(
        RankingTask.objects.filter(pk=task_id, status__in=_sources(TaskStatus.COMPLETE))
        .filter(required_rankings__lte=count_subquery(ranked))
        .update(status=TaskStatus.COMPLETE)
    )


def task_reopen(*, task: RankingTask, required_rankings: int) -> bool:
    """Ask for more rankings: raise the task's ``required_rankings`` and put it back in the queue.

    ``task`` is updated in memory too (the consensus recompute goes on with it). A retired task is left
    alone (False).
    """
    updated = RankingTask.objects.filter(pk=task.pk, status__in=_sources(TaskStatus.OPEN)).update(
        required_rankings=required_rankings, status=TaskStatus.OPEN
    )
    if updated:
        task.required_rankings = required_rankings
        task.status = TaskStatus.OPEN
    return bool(updated)


def task_retire(*, task_id: int) -> bool:
    """Withdraw a task so nobody is offered it again; False when it was already retired."""
    return bool(
        RankingTask.objects.filter(pk=task_id, status__in=_sources(TaskStatus.RETIRED)).update(
            status=TaskStatus.RETIRED
        )
    )
