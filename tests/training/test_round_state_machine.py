from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from gallery.models import Category
from jobs.services import job_kind_reconcile
from training.models import RoundStatus, TrainingRound
from training.runner import StageStopped, run_stage
from training.services import (
    ROUND_JOBS,
    RoundError,
    StageTicket,
    round_cancel,
    round_claim_stage,
    round_complete_stage,
    round_create,
    round_finish_ranking,
    round_heartbeat,
    round_resume,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def new_round(make_user):
    def _make(slugs=("spatial",), iterations=1):
        return round_create(
            created_by=make_user("admin"),
            categories=list(Category.objects.filter(slug__in=slugs)),
            base_generator=None,
            iterations=iterations,
            config={},
        )

    return _make


def _walk_worker_stages(round_id: int, iteration: int) -> None:
    for stage in ("training_rewards", "feedback_learning", "sampling", "inserting"):
        ticket = StageTicket(round_id, stage, iteration)
        assert round_claim_stage(ticket=ticket, worker="w") is not None
        round_complete_stage(ticket=ticket, worker="w")


def test_a_round_walks_every_stage_of_every_iteration_then_finishes(new_round):
    r = new_round(iterations=2)
    assert r.status == RoundStatus.QUEUED
    _walk_worker_stages(r.pk, 0)
    assert TrainingRound.objects.get(pk=r.pk).status == RoundStatus.AWAITING_RANKING
    round_finish_ranking(round_id=r.pk)
    r.refresh_from_db()
    assert (r.status, r.current_iteration) == (RoundStatus.TRAINING_REWARDS, 1)
    _walk_worker_stages(r.pk, 1)
    round_finish_ranking(round_id=r.pk)
    r.refresh_from_db()
    assert r.status == RoundStatus.DONE and r.finished_at is not None
    assert r.events.filter(message="round done").exists()


def test_a_stage_is_claimed_once_and_a_redelivered_message_finds_nothing(new_round):
    r = new_round()
    ticket = StageTicket(r.pk, "training_rewards", 0)
    assert round_claim_stage(ticket=ticket, worker="first") is not None
    assert round_claim_stage(ticket=ticket, worker="second") is None
    round_complete_stage(ticket=ticket, worker="first")
    # The same message delivered again after the stage finished: not the current stage any more.
    assert round_claim_stage(ticket=ticket, worker="third") is None
    assert round_claim_stage(ticket=StageTicket(r.pk, "sampling", 0), worker="x") is None


def test_only_the_holder_may_finish_a_stage(new_round):
    r = new_round()
    ticket = StageTicket(r.pk, "training_rewards", 0)
    round_claim_stage(ticket=ticket, worker="holder")
    with pytest.raises(RoundError):
        round_complete_stage(ticket=ticket, worker="intruder")


def test_a_second_round_for_the_same_category_is_refused_until_the_first_ends(new_round):
    first = new_round(slugs=("spatial", "non_spatial"))
    with pytest.raises(RoundError, match="already running for Spatial"):
        new_round(slugs=("spatial",))
    new_round(slugs=("attribute_binding",))  # other categories are free
    round_cancel(round_id=first.pk)
    new_round(slugs=("spatial",))


def test_cancelling_an_unclaimed_round_is_immediate(new_round):
    r = new_round()
    round_cancel(round_id=r.pk)
    r.refresh_from_db()
    assert r.status == RoundStatus.CANCELLED
    assert round_claim_stage(ticket=StageTicket(r.pk, "training_rewards", 0), worker="w") is None


def test_cancelling_a_running_round_stops_it_at_the_next_step(new_round):
    r = new_round()
    steps_run = []

    def stage(context):
        for step in range(5):
            steps_run.append(step)
            if step == 1:
                round_cancel(round_id=r.pk)
            context.beat(force=True)

    outcome = run_stage(
        round_id=r.pk, stage="training_rewards", iteration=0, worker="w", stages={"training_rewards": stage}
    )
    r.refresh_from_db()
    assert outcome == "cancelled" and r.status == RoundStatus.CANCELLED
    assert steps_run == [0, 1]


def test_a_failing_stage_fails_the_round_with_the_reason(new_round):
    r = new_round()

    def stage(context):
        raise ValueError("reward model config mismatch")

    assert (
        run_stage(
            round_id=r.pk,
            stage="training_rewards",
            iteration=0,
            worker="w",
            stages={"training_rewards": stage},
        )
        == "failed"
    )
    r.refresh_from_db()
    assert r.status == RoundStatus.FAILED
    assert "ValueError: reward model config mismatch" in r.error


def test_a_silent_worker_makes_the_round_stale_and_resume_hands_the_stage_to_another(new_round):
    r = new_round()
    ticket = StageTicket(r.pk, "training_rewards", 0)
    round_claim_stage(ticket=ticket, worker="dead")
    TrainingRound.objects.filter(pk=r.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=10))
    # ROUND_AUTO_RESUME_ATTEMPTS is 0: the lost stage is not re-sent, the round waits for its admin.
    assert job_kind_reconcile(ROUND_JOBS) == {"resent": [], "lost": [r.pk], "given_up": [r.pk]}
    assert job_kind_reconcile(ROUND_JOBS)["lost"] == []  # marked once
    assert TrainingRound.objects.get(pk=r.pk).is_stale
    round_resume(round_id=r.pk)
    assert round_claim_stage(ticket=ticket, worker="alive") is not None
    # The dead worker, should it come back, no longer holds anything.
    assert round_heartbeat(round_id=r.pk, worker="dead") is False
    with pytest.raises(RoundError):
        round_complete_stage(ticket=ticket, worker="dead")


def test_a_live_round_cannot_be_resumed(new_round):
    r = new_round()
    with pytest.raises(RoundError, match="Only a stale round"):
        round_resume(round_id=r.pk)


def test_the_reconciler_resends_stages_the_broker_lost(new_round):
    r = new_round()
    TrainingRound.objects.filter(pk=r.pk).update(enqueued_at=timezone.now() - timedelta(minutes=30))
    assert job_kind_reconcile(ROUND_JOBS)["resent"] == [r.pk]
    # Just re-sent: not again until the delay passes; a claimed round is never re-sent.
    assert job_kind_reconcile(ROUND_JOBS)["resent"] == []
    round_claim_stage(ticket=StageTicket(r.pk, "training_rewards", 0), worker="w")
    TrainingRound.objects.filter(pk=r.pk).update(enqueued_at=timezone.now() - timedelta(minutes=30))
    assert job_kind_reconcile(ROUND_JOBS)["resent"] == []


def test_with_auto_resume_a_lost_stage_goes_to_a_new_worker_until_its_attempts_run_out(new_round, settings):
    settings.ROUND_AUTO_RESUME_ATTEMPTS = 1
    r = new_round()
    ticket = StageTicket(r.pk, "training_rewards", 0)
    silent = {"heartbeat_at": timezone.now() - timedelta(minutes=10)}
    round_claim_stage(ticket=ticket, worker="dead-1")
    TrainingRound.objects.filter(pk=r.pk).update(**silent)
    assert job_kind_reconcile(ROUND_JOBS) == {"resent": [r.pk], "lost": [r.pk], "given_up": []}
    r.refresh_from_db()
    assert (r.claimed_by, r.is_stale, r.status) == ("", False, RoundStatus.TRAINING_REWARDS)
    assert round_heartbeat(round_id=r.pk, worker="dead-1") is False
    # The second loss of the same stage is one too many: the round waits for its admin.
    assert round_claim_stage(ticket=ticket, worker="dead-2").attempts == 2
    TrainingRound.objects.filter(pk=r.pk).update(**silent)
    assert job_kind_reconcile(ROUND_JOBS) == {"resent": [], "lost": [r.pk], "given_up": [r.pk]}
    r.refresh_from_db()
    assert (r.claimed_by, r.is_stale, r.status) == ("dead-2", True, RoundStatus.TRAINING_REWARDS)


def test_heartbeat_records_progress_and_reports_cancellation(new_round):
    r = new_round()
    round_claim_stage(ticket=StageTicket(r.pk, "training_rewards", 0), worker="w")
    assert round_heartbeat(round_id=r.pk, worker="w", progress={"step": 3, "total": 10}) is True
    r.refresh_from_db()
    assert r.progress == {"step": 3, "total": 10}
    round_cancel(round_id=r.pk)
    assert round_heartbeat(round_id=r.pk, worker="w") is False
    with pytest.raises(StageStopped):
        from training.runner import StageContext

        StageContext(training_round=r, ticket=StageTicket(r.pk, "training_rewards", 0), worker="w").beat(
            force=True
        )
