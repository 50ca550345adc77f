"""The one writer of a training round's state.

queued → training_rewards → feedback_learning → sampling → inserting → awaiting_ranking → (next iteration's
training_rewards | done), or failed (with the reason) / cancelled from any live state.

Every worker-side change is a conditional UPDATE that must touch exactly one row: a stage is claimed only
while it is the round's current stage and nobody live holds it, and only its holder may finish it. A
redelivered or duplicated Celery message therefore finds nothing to claim and does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from gallery.models import Category, Generator
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


def _enqueue(ticket: StageTicket) -> None:
    from training.tasks import round_run_stage

    TrainingRound.objects.filter(pk=ticket.round_id).update(enqueued_at=timezone.now())
    transaction.on_commit(
        lambda: round_run_stage.apply_async(args=[ticket.round_id, ticket.stage, ticket.iteration])
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
    _enqueue(StageTicket(training_round.pk, RoundStatus.TRAINING_REWARDS, 0))
    return training_round


@transaction.atomic
def round_claim_stage(*, ticket: StageTicket, worker: str) -> TrainingRound | None:
    """Take the ticket's stage for `worker`, or return None when it is not this worker's to run."""
    now = timezone.now()
    expected = [ticket.stage]
    if ticket.stage == RoundStatus.TRAINING_REWARDS and ticket.iteration == 0:
        expected.append(RoundStatus.QUEUED)
    updated = TrainingRound.objects.filter(
        pk=ticket.round_id,
        status__in=expected,
        current_iteration=ticket.iteration,
        claimed_by="",
        cancel_requested=False,
    ).update(
        status=ticket.stage,
        claimed_by=worker,
        heartbeat_at=now,
        is_stale=False,
        stage_attempts=F("stage_attempts") + 1,
        started_at=Case(When(started_at__isnull=True, then=Value(now)), default=F("started_at")),
    )
    if updated != 1:
        return None
    training_round = TrainingRound.objects.get(pk=ticket.round_id)
    _event(training_round, f"{ticket.stage} started on {worker} (attempt {training_round.stage_attempts})")
    return training_round


@transaction.atomic
def round_heartbeat(*, round_id: int, worker: str, progress: dict | None = None) -> bool:
    """Record liveness (and progress); False tells the stage to stop: cancelled, or no longer its claim."""
    fields: dict[str, object] = {"heartbeat_at": timezone.now()}
    if progress is not None:
        fields["progress"] = progress
    updated = TrainingRound.objects.filter(pk=round_id, claimed_by=worker, cancel_requested=False).update(
        **fields
    )
    return updated == 1


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
    updated = TrainingRound.objects.filter(
        pk=ticket.round_id, status=ticket.stage, current_iteration=ticket.iteration, claimed_by=worker
    ).update(status=next_status, claimed_by="", heartbeat_at=None, stage_attempts=0, progress={})
    if updated != 1:
        raise RoundError(f"round {ticket.round_id} is no longer at {ticket.stage} for {worker}")
    training_round = TrainingRound.objects.get(pk=ticket.round_id)
    _event(training_round, f"{ticket.stage} finished", stage=ticket.stage)
    if next_status in WORKER_STAGES:
        _enqueue(StageTicket(training_round.pk, next_status, training_round.current_iteration))
    return training_round


@transaction.atomic
def round_finish_ranking(*, round_id: int) -> TrainingRound:
    """Human ranking of this iteration's samples is in: start the next iteration, or finish."""
    training_round = TrainingRound.objects.select_for_update().get(pk=round_id)
    if training_round.status != RoundStatus.AWAITING_RANKING:
        raise RoundError(f"round {round_id} is {training_round.status}, not awaiting ranking")
    if training_round.current_iteration + 1 < training_round.iterations:
        training_round.current_iteration += 1
        training_round.status = RoundStatus.TRAINING_REWARDS
        training_round.save(update_fields=["current_iteration", "status"])
        _event(training_round, f"iteration {training_round.current_iteration} begins")
        _enqueue(
            StageTicket(training_round.pk, RoundStatus.TRAINING_REWARDS, training_round.current_iteration)
        )
    else:
        training_round.status = RoundStatus.DONE
        training_round.finished_at = timezone.now()
        training_round.save(update_fields=["status", "finished_at"])
        _event(training_round, "round done")
    return training_round


@transaction.atomic
def round_fail(*, round_id: int, reason: str, worker: str | None = None) -> None:
    lookup = Q(pk=round_id, status__in=LIVE_STATUSES)
    if worker is not None:
        lookup &= Q(claimed_by=worker)
    updated = TrainingRound.objects.filter(lookup).update(
        status=RoundStatus.FAILED, failure_reason=reason[:5000], claimed_by="", finished_at=timezone.now()
    )
    if updated == 1:
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
def round_mark_stale(*, after: timedelta) -> list[int]:
    """Periodic check: a claimed stage whose heartbeat stopped has lost its worker."""
    cutoff = timezone.now() - after
    ids = list(
        TrainingRound.objects.filter(status__in=WORKER_STAGES, is_stale=False, heartbeat_at__lt=cutoff)
        .exclude(claimed_by="")
        .values_list("pk", flat=True)
    )
    for training_round in TrainingRound.objects.filter(pk__in=ids):
        training_round.is_stale = True
        training_round.save(update_fields=["is_stale"])
        _event(
            training_round,
            f"stale: no heartbeat from {training_round.claimed_by} since {training_round.heartbeat_at:%H:%M:%S}",
        )
    return ids


@transaction.atomic
def round_resume(*, round_id: int) -> TrainingRound:
    """Hand a stale round's stage to a new worker; it continues from the last checkpoint."""
    training_round = TrainingRound.objects.select_for_update().get(pk=round_id)
    if not training_round.is_stale:
        raise RoundError("Only a stale round can be resumed (its worker stopped sending heartbeats).")
    if training_round.cancel_requested:
        _mark_cancelled(training_round)
        return training_round
    training_round.is_stale = False
    training_round.claimed_by = ""
    training_round.heartbeat_at = None
    training_round.save(update_fields=["is_stale", "claimed_by", "heartbeat_at"])
    _event(training_round, "resumed")
    _enqueue(StageTicket(training_round.pk, training_round.status, training_round.current_iteration))
    return training_round


@transaction.atomic
def round_reconcile(*, after: timedelta) -> list[int]:
    """Re-send stages the broker lost (Redis keeps nothing on disk): unclaimed and not taken for `after`."""
    cutoff = timezone.now() - after
    waiting = TrainingRound.objects.filter(
        Q(status__in=WORKER_STAGES) | Q(status=RoundStatus.QUEUED),
        claimed_by="",
        cancel_requested=False,
    ).filter(Q(enqueued_at__lt=cutoff) | Q(enqueued_at__isnull=True))
    ids = []
    for training_round in waiting.select_for_update(skip_locked=True):
        stage = (
            RoundStatus.TRAINING_REWARDS
            if training_round.status == RoundStatus.QUEUED
            else training_round.status
        )
        _event(training_round, "re-sent to the broker by the reconciler")
        _enqueue(StageTicket(training_round.pk, stage, training_round.current_iteration))
        ids.append(training_round.pk)
    return ids


@transaction.atomic
def round_auto_resume() -> list[int]:
    """Retry policy: resume stale rounds whose stage has been tried fewer than the configured times."""
    from django.conf import settings

    limit = settings.ROUND_AUTO_RESUME_ATTEMPTS
    if limit == 0:
        return []
    ids = list(
        TrainingRound.objects.filter(
            is_stale=True, stage_attempts__lte=limit, status__in=WORKER_STAGES
        ).values_list("pk", flat=True)
    )
    for round_id in ids:
        round_resume(round_id=round_id)
    return ids


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
