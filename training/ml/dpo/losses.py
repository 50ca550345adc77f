"""The Diffusion-DPO loss and its implicit reward accuracy, as pure functions of denoising errors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def denoising_errors(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error ``[B, ...] → [B]`` (a mean over pixels, as the authors' code)."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)


def dpo_logits(
    model_w: torch.Tensor,
    model_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """``z = −½·β·[(e_θ(x_w) − e_ref(x_w)) − (e_θ(x_l) − e_ref(x_l))]`` per pair.

    ``z`` is the difference of the model's implicit rewards for winner and loser: positive when the
    trained model has, relative to the reference, become better at denoising the winner than the loser.
    """
    return -0.5 * beta * ((model_w - ref_w) - (model_l - ref_l))


def dpo_loss(
    logits: torch.Tensor, labels: torch.Tensor | None = None, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over pairs of ``w · −[y·log σ(z) + (1−y)·log σ(−z)]``.

    ``y`` = 1 (the default) is the paper's ``−log σ(z)``; ``y`` = ½ is a tie, whose loss is smallest at
    ``z = 0``. The mean is over all pairs, so a down-weighted pair counts less rather than being
    renormalised back up.
    """
    y = torch.ones_like(logits) if labels is None else labels.to(logits)
    per_pair = -(y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits))
    if weights is not None:
        per_pair = per_pair * weights.to(per_pair)
    return per_pair.mean()


def implicit_reward_accuracy(logits: torch.Tensor) -> torch.Tensor:
    """Share of pairs whose implicit reward prefers the winner (an exact tie counts half, as in diffusers)."""
    if logits.numel() == 0:
        raise ValueError("no pairs")
    return ((logits > 0).float() + 0.5 * (logits == 0).float()).mean()
