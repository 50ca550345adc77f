"""Runs one claimed stage of a round on a worker, with liveness and cancellation wired in."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from training.models import TrainingRound
from training.services import (
    StageTicket,
    round_claim_stage,
    round_complete_stage,
    round_fail,
    round_heartbeat,
    round_record_metric,
    round_stop_cancelled,
)

logger = logging.getLogger(__name__)


class StageStopped(Exception):  # noqa: N818 - a request to stop, not an error
    """Raised inside a stage when the round was cancelled (or its claim lost) between steps."""


@dataclass
class StageContext:
    """Handed to a stage: the round row, and a progress callback for the ML core's training loops."""

    training_round: TrainingRound
    ticket: StageTicket
    worker: str
    heartbeat_every_s: float = 1.0
    metric_every_steps: int = 1
    _last_beat: float = field(default=0.0, init=False)

    @property
    def iteration(self) -> int:
        return self.ticket.iteration

    def beat(self, progress: dict | None = None, *, force: bool = False) -> None:
        """Say the stage is alive; raise StageStopped when the admin cancelled the round."""
        now = time.monotonic()
        if not force and now - self._last_beat < self.heartbeat_every_s:
            return
        self._last_beat = now
        if not round_heartbeat(round_id=self.training_round.pk, worker=self.worker, progress=progress):
            raise StageStopped()

    def progress_callback(self, label: str) -> Callable[[int, int, Mapping[str, float]], bool]:
        """A `(step, total, metrics) -> bool` callback (training.ml.common protocol) for one ML stage."""
        started = time.monotonic()

        def _progress(step: int, total: int, metrics: Mapping[str, float]) -> bool:
            clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
            elapsed = time.monotonic() - started
            eta = elapsed / step * (total - step) if step else None
            if step % self.metric_every_steps == 0 or step == total:
                round_record_metric(
                    round_id=self.training_round.pk,
                    stage=self.ticket.stage,
                    iteration=self.iteration,
                    step=step,
                    data={"label": label, **clean},
                )
            try:
                self.beat(
                    {
                        "label": label,
                        "step": step,
                        "total": total,
                        "metrics": clean,
                        "eta_s": round(eta, 1) if eta is not None else None,
                    },
                    force=step == total,
                )
            except StageStopped:
                return False
            return True

        return _progress


def run_stage(
    *,
    round_id: int,
    stage: str,
    iteration: int,
    worker: str,
    stages: Mapping[str, Callable[[StageContext], None]] | None = None,
) -> str:
    """Claim, run, and finish one stage; a message that finds nothing to claim does nothing."""
    ticket = StageTicket(round_id, stage, iteration)
    training_round = round_claim_stage(ticket=ticket, worker=worker)
    if training_round is None:
        return "not claimed"
    if stages is None:
        from training.stages import STAGES as stages
    context = StageContext(training_round=training_round, ticket=ticket, worker=worker)
    try:
        stages[stage](context)
        context.beat(force=True)  # a cancel that arrived during the last step still wins
    except StageStopped:
        round_stop_cancelled(round_id=round_id, worker=worker)
        return "cancelled"
    except Exception as exc:
        logger.exception("stage %s of round %s failed", stage, round_id)
        summary = "".join(traceback.format_exception_only(exc)).strip()
        round_fail(round_id=round_id, reason=f"{stage}: {summary}", worker=worker)
        return "failed"
    round_complete_stage(ticket=ticket, worker=worker)
    return "done"
