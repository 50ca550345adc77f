"""Reward-hacking guard: pure bookkeeping over (optimised reward, held-out score) evaluations.

The trainer samples the *current* model on validation prompts, scores the images with the rewards it is
optimising and with a held-out evaluator it never optimises, and feeds both numbers here. The guard
remembers the best evaluation by held-out score (the checkpoint to keep) and says when to stop: the
optimised reward keeps rising past the best point while the held-out score falls below it.

With the ``paired`` rule every evaluation is compared with the first (step 0, the model before this run)
on the same noise: the per-prompt held-out differences give a mean gain and an interval, and only an
evaluation whose interval lies above 0 can become the checkpoint to keep.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from training.ml.refl.config import GuardConfig


@dataclasses.dataclass(frozen=True)
class GuardEvaluation:
    step: int
    reward: float  # weighted optimised reward, mean over validation prompts
    heldout: float  # held-out evaluator, mean over validation prompts
    # Held-out score per validation prompt (mean over its seeds), same prompt order every evaluation.
    prompt_scores: tuple[float, ...] = ()
    # Paired rule: mean per-prompt gain over step 0 and the lower end of its interval.
    gain: float | None = None
    gain_low: float | None = None


def paired_gain(scores: Sequence[float], reference: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """(mean, mean − z·SE) of the per-prompt differences ``scores − reference``."""
    if len(scores) != len(reference) or not scores:
        raise ValueError("paired scores need the same, non-empty list of prompts")
    diffs = [a - b for a, b in zip(scores, reference, strict=True)]
    mean = sum(diffs) / len(diffs)
    if len(diffs) == 1:
        return mean, -math.inf  # one prompt says nothing about the spread
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, mean - z * math.sqrt(var / len(diffs))


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
        if self.config.rule == "paired":
            if not evaluation.prompt_scores:
                raise ValueError("the paired guard rule needs per-prompt held-out scores")
            if self.history:
                gain, low = paired_gain(
                    evaluation.prompt_scores, self.history[0].prompt_scores, self.config.z
                )
            else:
                gain, low = 0.0, 0.0
            evaluation = dataclasses.replace(evaluation, gain=gain, gain_low=low)
            self.history.append(evaluation)
            assert evaluation.gain is not None and evaluation.gain_low is not None
            best_gain = self.best.gain if self.best is not None and self.best.gain is not None else 0.0
            if self.best is None or (evaluation.gain_low > 0 and evaluation.gain > best_gain):
                self.best = evaluation
                self.streak = 0
                return GuardDecision(improved=True, diverging=False, stop=False)
        else:
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
        self.history = [_evaluation(e) for e in state["history"]]
        self.best = None if state["best"] is None else _evaluation(state["best"])
        self.streak = int(state["streak"])


def _evaluation(data: dict[str, Any]) -> GuardEvaluation:
    return GuardEvaluation(**{**data, "prompt_scores": tuple(data.get("prompt_scores", ()))})
