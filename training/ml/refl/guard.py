"""Reward-hacking guard: pure bookkeeping over (optimised reward, held-out score) evaluations.

The trainer samples the *current* model on validation prompts, scores the images with the rewards it is
optimising and with a held-out evaluator it never optimises, and feeds both numbers here. The guard
remembers the best evaluation by held-out score (the checkpoint to keep) and says when to stop: the
optimised reward keeps rising past the best point while the held-out score falls below it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from training.ml.refl.config import GuardConfig


@dataclasses.dataclass(frozen=True)
class GuardEvaluation:
    step: int
    reward: float  # weighted optimised reward, mean over validation prompts
    heldout: float  # held-out evaluator, mean over validation prompts


@dataclasses.dataclass(frozen=True)
class GuardDecision:
    improved: bool  # new best held-out score: snapshot the weights
    diverging: bool  # reward up and held-out down relative to the best evaluation
    stop: bool  # ``patience`` consecutive divergences: stop and roll back to the best


class HackingGuard:
    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self.history: list[GuardEvaluation] = []
        self.best: GuardEvaluation | None = None
        self.streak = 0

    def observe(self, evaluation: GuardEvaluation) -> GuardDecision:
        if not (math.isfinite(evaluation.reward) and math.isfinite(evaluation.heldout)):
            raise ValueError(f"non-finite guard evaluation {evaluation}")
        self.history.append(evaluation)
        if self.best is None or evaluation.heldout > self.best.heldout:
            self.best = evaluation
            self.streak = 0
            return GuardDecision(improved=True, diverging=False, stop=False)
        diverging = (
            evaluation.reward - self.best.reward > self.config.min_reward_rise
            and self.best.heldout - evaluation.heldout > self.config.min_heldout_drop
        )
        self.streak = self.streak + 1 if diverging else 0
        return GuardDecision(improved=False, diverging=diverging, stop=self.streak >= self.config.patience)

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [dataclasses.asdict(e) for e in self.history],
            "best": None if self.best is None else dataclasses.asdict(self.best),
            "streak": self.streak,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [GuardEvaluation(**e) for e in state["history"]]
        self.best = None if state["best"] is None else GuardEvaluation(**state["best"])
        self.streak = int(state["streak"])
