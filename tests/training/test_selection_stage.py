"""Active selection on the real worker: the reward-training stage scores the open tasks with the reward
model it just trained, the priorities follow those scores, and the checkpoint records the rankings spent
and the policy (the accuracy-vs-cost curves on the round page and /quality/ read them)."""

from __future__ import annotations

import pytest

from annotation.models import Ranking, RankingTask, TaskStatus
from annotation.services.selection import selection_policy_set
from gallery.models import Category
from rankmath.selection import TaskScore, task_priorities
from tests.training.test_closed_loop import _start_round, _wait_status
from training.models import RewardModelCheckpoint, RoundStatus
from training.world import world_gallery_seed, world_rankings_simulate

pytestmark = [
    pytest.mark.celery,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


def test_a_reward_training_stage_rescores_the_open_tasks_and_reorders_the_queue(
    celery_worker_process, client, make_user, wait_for
):
    world_gallery_seed(per_subcategory=5, seed=0, required_rankings=3)
    spatial = Category.objects.get(slug="spatial")
    tasks = RankingTask.objects.filter(prompt__category=spatial).order_by("id")
    left_open = list(tasks.values_list("pk", flat=True)[:4])
    world_rankings_simulate(
        per_task=3,
        seed=0,
        task_ids=list(RankingTask.objects.exclude(pk__in=left_open).values_list("pk", flat=True)),
    )
    selection_policy_set(category=spatial, policy="uncertainty", user=None)
    before = dict(RankingTask.objects.filter(pk__in=left_open).values_list("pk", "priority"))
    assert not RankingTask.objects.filter(pk__in=left_open, scored_at__isnull=False).exists()

    client.force_login(make_user("admin"))
    training_round = _start_round(client, feedback_steps=400)
    _wait_status(wait_for, training_round.pk, {RoundStatus.FEEDBACK_LEARNING})
    try:
        rows = list(
            RankingTask.objects.filter(pk__in=left_open).values_list("pk", "selection_draw", "uncertainty")
        )
        assert all(RankingTask.objects.get(pk=pk).status == TaskStatus.OPEN for pk in left_open)
        assert all(uncertainty is not None and 0.0 <= uncertainty <= 1.0 for _, _, uncertainty in rows)
        assert not RankingTask.objects.filter(pk__in=left_open, scored_at__isnull=True).exists()
        # The four tasks left open were the category's only open tasks when the stage scored them.
        after = dict(RankingTask.objects.filter(pk__in=left_open).values_list("pk", "priority"))
        expected = task_priorities("uncertainty", [TaskScore(pk, d, u) for pk, d, u in rows])
        assert sorted(after, key=after.get) == sorted(expected, key=expected.get)
        assert after != before
        assert training_round.events.filter(message__contains="scored for active selection").exists()

        checkpoint = RewardModelCheckpoint.objects.get(training_round=training_round, category=spatial)
        assert checkpoint.metrics["selection_policy"] == "uncertainty"
        spent = Ranking.objects.filter(task__prompt__category=spatial, task__is_gold=False).count()
        assert checkpoint.metrics["rankings_spent"] == spent > 0
    finally:
        # Past the reward stage is all this test needs; the round is stopped so no stage outlives the test.
        # A cancel is seen at the feedback stage's next step, and before its first one the stage loads the
        # base model, the reward models and its pretraining renders; with the 2 cores saturated (load ~25)
        # one run waited over two minutes for that, hence the long wait.
        client.post(f"/training/rounds/{training_round.pk}/cancel/")
        _wait_status(wait_for, training_round.pk, {RoundStatus.CANCELLED}, timeout=600)
