"""The three loss terms of multi-reward ReFL, as small pure functions of tensors."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from training.ml.refl.config import PhiName


def phi(rewards: torch.Tensor, name: PhiName = "relu_margin", margin: float = 2.0) -> torch.Tensor:
    """Map rewards to per-sample losses.

    ``relu_margin`` (ImageReward's ReFL): ReLU(margin − r) stops pushing once a sample clears the margin,
    which limits how far a reward can be exploited. ``softplus_margin`` is its smooth version (never
    exactly zero gradient). ``linear`` (−r) pushes without bound and is the most hackable.
    """
    if name == "relu_margin":
        return F.relu(margin - rewards)
    if name == "softplus_margin":
        return F.softplus(margin - rewards)
    if name == "linear":
        return -rewards
    raise ValueError(f"unknown phi {name!r}")


def weighted_reward_loss(
    rewards: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    *,
    scale: float,
    phi_name: PhiName = "relu_margin",
    margin: float = 2.0,
) -> torch.Tensor:
    """λ · Σ_i w_i · mean_b φ(R_i[b])."""
    if set(rewards) != set(weights):
        raise ValueError(f"rewards {sorted(rewards)} and weights {sorted(weights)} name different models")
    if not rewards:
        raise ValueError("at least one reward is needed")
    total = None
    for name, value in rewards.items():
        if value.ndim != 1:
            raise ValueError(f"reward {name!r} must return shape [B], got {tuple(value.shape)}")
        term = weights[name] * phi(value, phi_name, margin).mean()
        total = term if total is None else total + term
    assert total is not None
    return scale * total


def weighted_reward(rewards: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Per-sample Σ_i w_i R_i (what best-of-N ranks by and what the guard tracks)."""
    if set(rewards) != set(weights):
        raise ValueError(f"rewards {sorted(rewards)} and weights {sorted(weights)} name different models")
    return torch.stack([weights[n] * rewards[n] for n in rewards]).sum(0)


def kl_penalty(prediction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared distance to the frozen reference model's prediction.

    For two Gaussian reverse transitions with the same variance the KL divergence is proportional to the
    squared distance of their means, which at a fixed x_t is an affine function of the noise prediction,
    so this is the per-step KL up to a timestep-dependent constant.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"shape mismatch {tuple(prediction.shape)} vs {tuple(reference.shape)}")
    return F.mse_loss(prediction.float(), reference.detach().float())


def denoising_target(
    scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the denoiser should predict for ``add_noise(clean, noise, t)`` under the scheduler's parameterisation."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if kind == "sample":
        return clean
    raise ValueError(f"unsupported prediction_type {kind!r}")
