"""The one number feedback learning depends on: can the reward models rank the current model's own samples?

Held-out expert-ranked pairs whose two images were both drawn by the current model (p_k) measure it. A
reward model near chance on them gives ReFL nothing to climb but its own blind spots, so the gate keeps
ReFL from starting when the lower end of the accuracy's 95 % interval is at or below 0.5.

The interval resamples prompts (all pairs of one prompt together: pairs of one ranked group share images
and are not independent); with a fixed seed, so the same data always give the same decision.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from training.ml.reward.data import PairRecord


@dataclasses.dataclass(frozen=True)
class PairAccuracy:
    accuracy: float | None  # share of non-tied pairs ordered like the experts (score ties count half)
    low: float | None  # 95 % interval, prompts resampled
    high: float | None
    pairs: int  # non-tied pairs measured
    prompts: int

    def as_metrics(self, prefix: str = "own_") -> dict[str, float | int | None]:
        return {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}accuracy_ci_low": self.low,
            f"{prefix}accuracy_ci_high": self.high,
            f"{prefix}pairs": self.pairs,
            f"{prefix}prompts": self.prompts,
        }


def pair_accuracy(
    records: Sequence[PairRecord],
    scores: Mapping[int, float],
    reps: int = 2000,
    seed: int = 0,
) -> PairAccuracy:
    """Accuracy of ``scores`` (image id → score) on the non-tied ``records``, with a prompt bootstrap."""
    by_prompt: dict[int, list[float]] = {}
    for record in records:
        if record.label != 1.0:
            continue  # an expert tie has no right order
        a, b = scores[record.winner_id], scores[record.loser_id]
        by_prompt.setdefault(record.prompt_id, []).append(1.0 if a > b else 0.5 if a == b else 0.0)
    if not by_prompt:
        return PairAccuracy(None, None, None, 0, 0)
    sums = np.array([sum(v) for v in by_prompt.values()])
    counts = np.array([len(v) for v in by_prompt.values()])
    accuracy = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(sums), size=(reps, len(sums)))
    boot = sums[index].sum(1) / counts[index].sum(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return PairAccuracy(accuracy, float(low), float(high), int(counts.sum()), len(sums))


def split_own_pairs(
    records: Sequence[PairRecord], own_images: set[int], share: float, salt: str
) -> tuple[list[PairRecord], list[PairRecord]]:
    """(training records, gate records): expert-ranked pairs of two of the current model's images on a
    hash-chosen ``share`` of the prompts that have any are held out for the gate; everything else trains.

    Model-source pairs never measure the gate: they are an earlier reward model's placement of new
    samples (two samples of p_k inserted by reward score), not the experts' judgement."""

    def own(r: PairRecord) -> bool:
        return r.source == "human" and r.winner_id in own_images and r.loser_id in own_images

    own_prompts = sorted({r.prompt_id for r in records if own(r)})
    ranked = sorted(own_prompts, key=lambda p: hashlib.sha256(f"{salt}:{p}".encode()).hexdigest())
    held = set(ranked[: round(share * len(ranked))])
    train, gate = [], []
    for r in records:
        (gate if own(r) and r.prompt_id in held else train).append(r)
    return train, gate


def accuracy_dropped(
    before: tuple[float, float, float], after: tuple[float, float, float], z: float = 1.645
) -> bool:
    """Whether accuracy fell significantly from ``before`` to ``after`` (each ``(accuracy, low, high)``
    with a 95 % interval, measured on different pairs): one-sided at 5 %, each standard error read back
    from its interval's width (``(high − low) / 3.92``)."""
    se = np.hypot((before[2] - before[1]) / 3.92, (after[2] - after[1]) / 3.92)
    drop = before[0] - after[0]
    if se == 0:
        return drop > 0
    return bool(drop / se > z)


def _triple(metrics: Mapping[str, object], prefix: str) -> tuple[float, float, float] | None:
    values = [metrics.get(f"{prefix}accuracy{s}") for s in ("", "_ci_low", "_ci_high")]
    if any(v is None for v in values):
        return None
    return tuple(float(v) for v in values)  # type: ignore[arg-type, return-value]


class GateClosed(RuntimeError):
    """ReFL refused to start: a reward model cannot (or could not be shown to) rank the model's samples."""


def gate_reason(mode: str, accuracies: Mapping[str, Mapping[str, object]]) -> str | None:
    """Why ReFL must not start, or None. ``accuracies``: category → reward metrics with ``own_*`` keys.

    ``require``: every category measured with a lower bound above 0.5. ``measured``: a category that was
    measured must have its lower bound above 0.5; one with no own-sample pairs yet passes (and says so in
    the round's log). ``off``: never closed. In both, a category whose previous reward model (R_{k-1})
    ranks the fresh samples of p_k significantly worse than it ranked p_{k-1}'s (``fresh_*`` against
    ``previous_own_*`` metrics, see :func:`accuracy_dropped`) closes the gate: the loop stops there.
    """
    if mode == "off":
        return None
    problems = []
    for category, metrics in sorted(accuracies.items()):
        accuracy, low, high = (metrics.get(f"own_accuracy{s}") for s in ("", "_ci_low", "_ci_high"))
        pairs = metrics.get("own_pairs") or 0
        if accuracy is None:
            if mode == "require":
                problems.append(f"{category}: no expert-ranked pairs of the current model's own samples")
            continue
        if float(low) <= 0.5:  # type: ignore[arg-type]
            problems.append(
                f"{category}: {float(accuracy):.3f} [{float(low):.3f}, {float(high):.3f}] on {pairs} "  # type: ignore[arg-type]
                "pairs of the current model's own samples (lower bound not above chance)"
            )
        # The hacking signature across iterations: R_{k-1} judged p_{k-1}'s samples well but judges the
        # fresh samples of p_k, the model fine-tuned on it, worse — the last fine-tuning moved the model
        # where the reward is wrong, and climbing the same kind of reward again would repeat that.
        before, after = _triple(metrics, "previous_own_"), _triple(metrics, "fresh_")
        if before is not None and after is not None and accuracy_dropped(before, after):
            problems.append(
                f"{category}: the previous iteration's reward model ranked its own model's samples at "
                f"{before[0]:.3f} [{before[1]:.3f}, {before[2]:.3f}] but the fine-tuned model's fresh samples "
                f"at {after[0]:.3f} [{after[1]:.3f}, {after[2]:.3f}] (a significant drop: the last "
                "fine-tuning moved the model where the reward is wrong)"
            )
    if not problems:
        return None
    return "ReFL gate closed — fine-tuning on these reward models could only hack them. " + "; ".join(
        problems
    )
