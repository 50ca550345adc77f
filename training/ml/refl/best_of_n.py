"""Best-of-N sampling: draw N candidates per prompt and keep the one the reward models rank highest."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from training.ml.refl.adapters import DiffusionAdapter
from training.ml.refl.losses import weighted_reward
from training.ml.refl.sampler import sample


@dataclasses.dataclass
class BestOfN:
    images: torch.Tensor  # [P, 3, H, W] the chosen candidate per prompt
    scores: torch.Tensor  # [P, N] weighted reward of every candidate
    chosen: torch.Tensor  # [P] index of the chosen candidate


@torch.no_grad()
def best_of_n(
    adapter: DiffusionAdapter,
    prompts: Sequence[str],
    n: int,
    reward_fns: Mapping[str, object],
    weights: Mapping[str, float] | None = None,
    *,
    num_inference_steps: int = 40,
    guidance_scale: float = 1.0,
    height: int | None = None,
    width: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 8,
) -> BestOfN:
    """Candidates are sampled in chunks of ``batch_size`` (prompt-major: all N of prompt 0 first)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not prompts:
        raise ValueError("no prompts")
    weights = dict(weights) if weights is not None else {name: 1.0 for name in reward_fns}
    expanded = [p for p in prompts for _ in range(n)]
    chunks, scores = [], []
    for start in range(0, len(expanded), batch_size):
        chunk_prompts = expanded[start : start + batch_size]
        images = sample(
            adapter,
            chunk_prompts,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            generator=generator,
        )
        rewards = {name: fn(chunk_prompts, images).float() for name, fn in reward_fns.items()}
        scores.append(weighted_reward(rewards, weights))
        chunks.append(images)
    images = torch.cat(chunks).view(len(prompts), n, *chunks[0].shape[1:])
    table = torch.cat(scores).view(len(prompts), n)
    chosen = table.argmax(dim=1)
    return BestOfN(images[torch.arange(len(prompts)), chosen], table, chosen)
