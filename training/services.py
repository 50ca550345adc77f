"""The one writer of a training round's state.

queued → training_rewards → feedback_learning → sampling → inserting → awaiting_ranking → (next iteration's
training_rewards | done), or failed (with the reason) / cancelled from any live state.

A round's stages are background jobs of the kind ``ROUND_JOBS`` (``jobs.services``): a stage is claimed
only while it is the round's current stage and nobody holds it, and only its holder may finish it, so a
redelivered or duplicated Celery message finds nothing to claim and does nothing. The shared reconciler
re-sends stages the broker lost and notices a holder that stopped heart-beating: it hands the stage to a
new worker while the stage has been claimed at most ROUND_AUTO_RESUME_ATTEMPTS times, and otherwise marks
the round stale for an admin to resume or cancel.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from gallery.models import Category, Generator
from jobs.registry import JobKind
from jobs.services import job_claim, job_enqueue, job_fail, job_heartbeat, job_release
from training.models import TERMINAL_STATUSES, EventKind, RoundEvent, RoundStatus, TrainingRound

# Stages a worker executes, in order; awaiting_ranking waits for people.
WORKER_STAGES = (
    RoundStatus.TRAINING_REWARDS,
    RoundStatus.FEEDBACK_LEARNING,
    RoundStatus.SAMPLING,
    RoundStatus.INSERTING,
)
NEXT_STATUS = {
    RoundStatus.TRAINING_REWARDS: RoundStatus.FEEDBACK_LEARNING,
    RoundStatus.FEEDBACK_LEARNING: RoundStatus.SAMPLING,
    RoundStatus.SAMPLING: RoundStatus.INSERTING,
    RoundStatus.INSERTING: RoundStatus.AWAITING_RANKING,
}
LIVE_STATUSES = tuple(s for s in RoundStatus.values if s not in TERMINAL_STATUSES)


class RoundError(Exception):
    """A request the round's current state does not allow; the message says why."""


@dataclass(frozen=True)
class StageTicket:
    """What a Celery message carries: which stage of which iteration it is meant to run."""

    round_id: int
    stage: str
    iteration: int


def _stage_message(training_round: TrainingRound) -> tuple[int, str, int]:
    """The ticket of the round's current stage, as ``training.round_run_stage`` takes it."""
    stage = training_round.status
    if stage == RoundStatus.QUEUED:
        stage = RoundStatus.TRAINING_REWARDS
    return (training_round.pk, str(stage), training_round.current_iteration)


def _hand_back(training_round: TrainingRound) -> None:
    """A lost stage goes to a new worker (it continues from the last checkpoint), unless it was cancelled."""
    if training_round.cancel_requested:
        _mark_cancelled(training_round)
        return
    job_release(ROUND_JOBS, pk=training_round.pk, is_stale=False)
    training_round.refresh_from_db()
    job_enqueue(ROUND_JOBS, job=training_round)


def _mark_stale(training_round: TrainingRound, reason: str) -> None:
    # The claim stays: a worker that was only slow keeps its stage until someone resumes the round.
    TrainingRound.objects.filter(pk=training_round.pk).update(is_stale=True)


def _note(round_id: int, message: str) -> None:
    _event(TrainingRound.objects.get(pk=round_id), message)


ROUND_JOBS = JobKind(
    name="training_round",
    model=TrainingRound,
    task="training.round_run_stage",
    task_args=_stage_message,
    stale_after_s=lambda: settings.ROUND_STALE_AFTER_S,
    max_losses=lambda: settings.ROUND_AUTO_RESUME_ATTEMPTS + 1,
    waiting=Q(status__in=[RoundStatus.QUEUED, *WORKER_STAGES], claimed_by="", cancel_requested=False),
    held=Q(status__in=WORKER_STAGES) & ~Q(claimed_by=""),
    claimed_status=None,
    reclaim_stale=False,
    resend_lost=_hand_back,
    give_up=_mark_stale,
    given_up=Q(is_stale=True),
    note=_note,
)


def _event(
    training_round: TrainingRound, message: str, *, stage: str | None = None, data: dict | None = None
) -> None:
    RoundEvent.objects.create(
        training_round=training_round,
        kind=EventKind.LOG,
        stage=stage or training_round.status,
        iteration=training_round.current_iteration,
        message=message,
        data=data or {},
    )


@transaction.atomic
def round_create(
    *,
    created_by,
    categories: list[Category],
    base_generator: Generator | None,
    iterations: int,
    config: dict,
) -> TrainingRound:
    """Queue a round; refused while another live round covers any of the same categories."""
    if not categories:
        raise RoundError("Choose at least one category.")
    if not 1 <= iterations <= 10:
        raise RoundError("Iterations must be between 1 and 10.")
    # Lock the categories so two admins starting rounds at once cannot both pass the check below.
    locked = list(
        Category.objects.select_for_update().filter(pk__in=[c.pk for c in categories]).order_by("pk")
    )
    busy = (
        TrainingRound.objects.filter(status__in=LIVE_STATUSES, categories__in=locked)
        .values_list("categories__name", flat=True)
        .distinct()
    )
    busy_names = sorted(set(busy))
    if busy_names:
        raise RoundError(f"A round is already running for {', '.join(busy_names)}; wait for it or cancel it.")
    training_round = TrainingRound.objects.create(
        created_by=created_by, base_generator=base_generator, iterations=iterations, config=config
    )
    training_round.categories.set(locked)
    _event(training_round, f"queued by {created_by}", stage=RoundStatus.QUEUED)
    job_enqueue(ROUND_JOBS, job=training_round)
    return training_round


@transaction.atomic
def round_claim_stage(*, ticket: StageTicket, worker: str) -> TrainingRound | None:
    """Take the ticket's stage for `worker`, or return None when it is not this worker's to run."""
    expected = [ticket.stage]
    if ticket.stage == RoundStatus.TRAINING_REWARDS and ticket.iteration == 0:
        expected.append(RoundStatus.QUEUED)
    claimed = job_claim(
        ROUND_JOBS,
        pk=ticket.round_id,
        worker=worker,
        where=Q(status__in=expected, current_iteration=ticket.iteration),
        status=ticket.stage,
        is_stale=False,
    )
    if not claimed:
        return None
    training_round = TrainingRound.objects.get(pk=ticket.round_id)
    # The claim's record, also as data: which worker took which stage, on which attempt.
    _event(
        training_round,
        f"{ticket.stage} started on {worker} (attempt {training_round.attempts})",
        data={"claimed_by": worker, "attempt": training_round.attempts},
    )
    return training_round


@transaction.atomic
def round_heartbeat(*, round_id: int, worker: str, progress: dict | None = None) -> bool:
    """Record liveness (and progress); False tells the stage to stop: cancelled, or no longer its claim."""
    changes = {} if progress is None else {"progress": progress}
    return job_heartbeat(ROUND_JOBS, pk=round_id, worker=worker, where=Q(cancel_requested=False), **changes)


@transaction.atomic
def round_record_metric(*, round_id: int, stage: str, iteration: int, step: int, data: dict) -> None:
    RoundEvent.objects.create(
        training_round_id=round_id,
        kind=EventKind.METRIC,
        stage=stage,
        iteration=iteration,
        step=step,
        data=data,
    )


@transaction.atomic
def round_log(*, round_id: int, message: str, data: dict | None = None) -> None:
    _event(TrainingRound.objects.get(pk=round_id), message, data=data)


@transaction.atomic
def round_complete_stage(*, ticket: StageTicket, worker: str) -> TrainingRound:
    """The holder finished its stage: move on and hand the next stage to the broker."""
    next_status = NEXT_STATUS[RoundStatus(ticket.stage)]
    released = job_release(
        ROUND_JOBS,
        pk=ticket.round_id,
        worker=worker,
        where=Q(status=ticket.stage, current_iteration=ticket.iteration),
        status=next_status,
        attempts=0,
        progress={},
        is_stale=False,
    )
    if not released:
        raise RoundError(f"round {ticket.round_id} is no longer at {ticket.stage} for {worker}")
    training_round = TrainingRound.objects.get(pk=ticket.round_id)
    _event(training_round, f"{ticket.stage} finished", stage=ticket.stage)
    if next_status in WORKER_STAGES:
        job_enqueue(ROUND_JOBS, job=training_round)
    return training_round


@transaction.atomic
def round_finish_ranking(*, round_id: int) -> TrainingRound:
    """Human ranking of this iteration's samples is in: start the next iteration, or finish."""
    training_round = TrainingRound.objects.select_for_update().get(pk=round_id)
    if training_round.status != RoundStatus.AWAITING_RANKING:
        raise RoundError(f"round {round_id} is {training_round.status}, not awaiting ranking")
    key = str(training_round.current_iteration)
    if "ranking" not in training_round.outputs.get(key, {}):
        # The lineage says who ranked this iteration's new samples: the experts, unless an admin continued
        # with the reward model's placement (round_continue_without_experts records that first).
        _merge_outputs(training_round, key, ranking={"by": RANKED_BY_EXPERTS})
    if training_round.current_iteration + 1 < training_round.iterations:
        training_round.current_iteration += 1
        training_round.status = RoundStatus.TRAINING_REWARDS
        training_round.save(update_fields=["current_iteration", "status"])
        _event(training_round, f"iteration {training_round.current_iteration} begins")
        job_enqueue(ROUND_JOBS, job=training_round)
    else:
        training_round.status = RoundStatus.DONE
        training_round.finished_at = timezone.now()
        training_round.save(update_fields=["status", "finished_at"])
        _event(training_round, "round done")
    return training_round


RANKED_BY_EXPERTS = "experts"
RANKED_BY_REWARD_MODEL = "reward_model"


def _merge_outputs(training_round: TrainingRound, key: str, **outputs: object) -> None:
    merged = dict(training_round.outputs)
    merged[key] = {**merged.get(key, {}), **outputs}
    training_round.outputs = merged
    training_round.save(update_fields=["outputs"])


@transaction.atomic
def round_continue_without_experts(*, round_id: int, admin) -> TrainingRound:
    """Experts are not available: go on with the reward model's placement of the new samples (the model
    pairs the insertion stage stored) instead of waiting for the pushed tasks' rankings.

    Recorded in the round's outputs and log, so the lineage shows that this iteration's new samples were
    placed by the reward model and who decided it. The pushed tasks stay open: rankings that arrive later
    still count in later iterations.
    """
    from training.selectors import round_awaiting

    training_round = TrainingRound.objects.select_for_update().get(pk=round_id)
    if training_round.status != RoundStatus.AWAITING_RANKING:
        raise RoundError(f"round {round_id} is {training_round.get_status_display()}, not awaiting ranking")
    awaiting = round_awaiting(training_round) or {"tasks": 0, "rankings": 0, "pushed": 0}
    _merge_outputs(
        training_round,
        str(training_round.current_iteration),
        ranking={
            "by": RANKED_BY_REWARD_MODEL,
            "continued_by": admin.get_username(),
            "at": timezone.now().isoformat(),
            "unranked_tasks": awaiting["tasks"],
            "missing_rankings": awaiting["rankings"],
            "pushed_tasks": awaiting["pushed"],
        },
    )
    _event(
        training_round,
        f"continued with the reward model's placement (experts not available): {awaiting['tasks']} of "
        f"{awaiting['pushed']} pushed tasks unranked, {awaiting['rankings']} rankings missing; "
        f"by {admin.get_username()}",
    )
    return round_finish_ranking(round_id=round_id)


@transaction.atomic
def round_fail(*, round_id: int, reason: str, worker: str | None = None) -> None:
    failed = job_fail(
        ROUND_JOBS,
        pk=round_id,
        reason=reason,
        worker=worker,
        where=Q(status__in=LIVE_STATUSES),
        claimed_by="",
    )
    if failed:
        _event(TrainingRound.objects.get(pk=round_id), f"failed: {reason[:500]}")


@transaction.atomic
def round_cancel(*, round_id: int) -> TrainingRound:
    """Cancel now when no worker holds the round; otherwise ask the holder to stop at its next step."""
    training_round = TrainingRound.objects.select_for_update().get(pk=round_id)
    if training_round.status in TERMINAL_STATUSES:
        raise RoundError(f"round {round_id} is already {training_round.status}")
    if training_round.claimed_by and not training_round.is_stale:
        training_round.cancel_requested = True
        training_round.save(update_fields=["cancel_requested"])
        _event(training_round, "cancel requested; the worker stops at its next step")
    else:
        _mark_cancelled(training_round)
    return training_round


def _mark_cancelled(training_round: TrainingRound) -> None:
    training_round.status = RoundStatus.CANCELLED
    training_round.claimed_by = ""
    training_round.cancel_requested = True
    training_round.finished_at = timezone.now()
    training_round.save(update_fields=["status", "claimed_by", "cancel_requested", "finished_at"])
    _event(training_round, "cancelled")


@transaction.atomic
def round_stop_cancelled(*, round_id: int, worker: str) -> None:
    """The holder saw the cancel request and stopped; its last checkpoint stays registered."""
    training_round = TrainingRound.objects.select_for_update().get(pk=round_id)
    if training_round.claimed_by == worker and training_round.status not in TERMINAL_STATUSES:
        _mark_cancelled(training_round)


@transaction.atomic
def round_resume(*, round_id: int) -> TrainingRound:
    """Hand a stale round's stage to a new worker; it continues from the last checkpoint."""
    training_round = TrainingRound.objects.select_for_update().get(pk=round_id)
    if not training_round.is_stale:
        raise RoundError("Only a stale round can be resumed (its worker stopped sending heartbeats).")
    if not training_round.cancel_requested:
        _event(training_round, "resumed")
    _hand_back(training_round)
    training_round.refresh_from_db()
    return training_round


@transaction.atomic
def round_record_outputs(*, round_id: int, iteration: int, **outputs: object) -> None:
    """Merge what a stage produced into the round's per-iteration outputs."""
    training_round = TrainingRound.objects.select_for_update().get(pk=round_id)
    key = str(iteration)
    merged = dict(training_round.outputs)
    merged[key] = {**merged.get(key, {}), **outputs}
    training_round.outputs = merged
    training_round.save(update_fields=["outputs"])


def round_check_awaiting() -> list[int]:
    """Advance rounds whose pushed ranking tasks have all been completed by the annotators."""
    from annotation.models import RankingTask, TaskStatus

    advanced = []
    for training_round in TrainingRound.objects.filter(status=RoundStatus.AWAITING_RANKING):
        pushed = training_round.outputs.get(str(training_round.current_iteration), {}).get("pushed_tasks", [])
        if RankingTask.objects.filter(pk__in=pushed).exclude(status=TaskStatus.COMPLETE).exists():
            continue
        try:
            round_finish_ranking(round_id=training_round.pk)
        except RoundError:
            continue  # another checker advanced it first
        advanced.append(training_round.pk)
    return advanced
