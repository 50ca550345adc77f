"""A round awaiting human ranking can be continued by an admin with the reward model's placement when the
experts are not available; the lineage records it (and records the experts when they did rank)."""

from __future__ import annotations

import pytest

from annotation.models import RankingTask, TaskStatus
from gallery.models import Category
from gallery.services import prompt_ensure
from training.models import RoundStatus, TrainingRound
from training.services import (
    RoundError,
    StageTicket,
    round_check_awaiting,
    round_claim_stage,
    round_complete_stage,
    round_continue_without_experts,
    round_create,
    round_record_outputs,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def awaiting_round(make_user):
    admin = make_user("admin", username="boss")
    spatial = Category.objects.get(slug="spatial")
    r = round_create(created_by=admin, categories=[spatial], base_generator=None, iterations=2, config={})
    pushed = [
        RankingTask.objects.create(prompt=prompt_ensure(text=t, category=spatial)[0], required_rankings=3).pk
        for t in ("a cat left of a dog", "a cup above a plate")
    ]
    for stage in ("training_rewards", "feedback_learning", "sampling", "inserting"):
        ticket = StageTicket(r.pk, stage, 0)
        round_claim_stage(ticket=ticket, worker="gpu-1")
        if stage == "inserting":
            round_record_outputs(round_id=r.pk, iteration=0, pushed_tasks=pushed)
        round_complete_stage(ticket=ticket, worker="gpu-1")
    assert TrainingRound.objects.get(pk=r.pk).status == RoundStatus.AWAITING_RANKING
    return r, admin, pushed


def test_an_admin_continues_with_the_reward_model_placement_and_the_lineage_says_so(client, awaiting_round):
    r, admin, pushed = awaiting_round
    client.force_login(admin)
    page = client.get(f"/training/rounds/{r.pk}/").content.decode()
    assert 'data-role="continue-without-experts"' in page
    response = client.post(f"/training/rounds/{r.pk}/continue/")
    assert response.status_code == 302
    r.refresh_from_db()
    assert (r.status, r.current_iteration) == (RoundStatus.TRAINING_REWARDS, 1)
    ranking = r.outputs["0"]["ranking"]
    assert ranking["by"] == "reward_model" and ranking["continued_by"] == "boss"
    assert (ranking["unranked_tasks"], ranking["missing_rankings"], ranking["pushed_tasks"]) == (2, 6, 2)
    assert r.events.filter(message__contains="reward model's placement (experts not available)").exists()
    # The pushed tasks stay open: rankings that come later still count.
    assert set(RankingTask.objects.filter(pk__in=pushed).values_list("status", flat=True)) == {
        TaskStatus.OPEN
    }
    lineage = client.get(f"/training/rounds/{r.pk}/").content.decode()
    assert 'data-lineage="ranking" data-by="reward_model"' in lineage
    assert "continued by boss with 2 of 2 pushed tasks unranked (6 rankings missing)" in lineage


def test_a_round_the_experts_ranked_is_recorded_as_ranked_by_them(awaiting_round):
    r, _, pushed = awaiting_round
    RankingTask.objects.filter(pk__in=pushed).update(status=TaskStatus.COMPLETE)
    assert round_check_awaiting() == [r.pk]
    r.refresh_from_db()
    assert r.outputs["0"]["ranking"] == {"by": "experts"}


def test_only_a_round_awaiting_ranking_can_be_continued_and_only_by_an_admin(
    client, make_user, awaiting_round
):
    r, admin, _ = awaiting_round
    client.force_login(make_user("researcher"))
    assert client.post(f"/training/rounds/{r.pk}/continue/").status_code == 403
    assert TrainingRound.objects.get(pk=r.pk).status == RoundStatus.AWAITING_RANKING
    round_continue_without_experts(round_id=r.pk, admin=admin)
    with pytest.raises(RoundError, match="not awaiting ranking"):
        round_continue_without_experts(round_id=r.pk, admin=admin)
