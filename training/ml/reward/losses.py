"""Pairwise preference loss computed from listwise scores.

Scores come in one flat vector (every image of every prompt group in the batch, each scored once);
pairs are index pairs into it. For a pair with score difference ``d = R(c, x_w) - R(c, x_l)`` and label
``y`` the loss is the Bradley–Terry cross-entropy

    loss = -( y * log σ(d) + (1 - y) * log σ(-d) )

which is ``-log σ(d)`` for a strict preference (y = 1) and, for a tie (y = 0.5), the symmetric
``-(log σ(d) + log σ(-d)) / 2``: minimised at d = 0 and indifferent to which image is called "winner".
``tie_mode="skip"`` gives ties weight 0 instead. The batch loss is the weighted mean
``Σ w_i loss_i / Σ w_i`` over pairs, so it does not depend on how pairs are grouped into prompts.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

TIE_LABEL = 0.5


@dataclasses.dataclass(frozen=True)
class PairStats:
    """Unreduced counts for accuracy: strict pairs only (a tie has no right answer)."""

    correct: float
    strict_pairs: int


def pair_weights(labels: torch.Tensor, weights: torch.Tensor, tie_mode: str) -> torch.Tensor:
    if tie_mode == "skip":
        return torch.where(labels == TIE_LABEL, torch.zeros_like(weights), weights)
    if tie_mode == "half":
        return weights
    raise ValueError(f"tie_mode must be 'half' or 'skip', got {tie_mode!r}")


def per_pair_loss(diff: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # logsigmoid is the numerically stable form of log σ(·) for large |d|.
    return -(labels * F.logsigmoid(diff) + (1.0 - labels) * F.logsigmoid(-diff))


def listwise_pair_loss(
    scores: torch.Tensor,
    winners: torch.Tensor,
    losers: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    tie_mode: str = "half",
    denominator: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean pairwise loss from a flat score vector; 0 (with a graph) if no pair has weight.

    ``denominator`` replaces this batch's weight sum (a share of a combined batch divides by the combined
    batch's weight, so that the shares' losses add up to its mean).
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    if not (winners.shape == losers.shape == labels.shape == weights.shape):
        raise ValueError("winners, losers, labels and weights must have the same shape")
    if winners.numel() and (torch.any(weights < 0) or torch.any((labels < 0) | (labels > 1))):
        raise ValueError("weights must be >= 0 and labels in [0, 1]")
    diff = scores[winners] - scores[losers]
    labels = labels.to(diff.dtype)
    w = pair_weights(labels, weights.to(diff.dtype), tie_mode)
    total = w.sum() if denominator is None else denominator.to(w)
    if winners.numel() == 0 or total <= 0:
        return scores.sum() * 0.0
    return (w * per_pair_loss(diff, labels)).sum() / total


@torch.no_grad()
def pair_accuracy(
    scores: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor, labels: torch.Tensor
) -> PairStats:
    """Strict pairs ranked right; an exact score tie counts half."""
    strict = labels != TIE_LABEL
    diff = (scores[winners] - scores[losers])[strict]
    correct = (diff > 0).sum().item() + 0.5 * (diff == 0).sum().item()
    return PairStats(correct=float(correct), strict_pairs=int(strict.sum().item()))
