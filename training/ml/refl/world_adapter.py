"""Adapter for the synthetic world's base model (pixel space, word-level text encoder, decode = identity).

Also the oracle as a held-out evaluator: it reads images only, is not differentiable and is never
optimised, which is exactly what the hacking guard needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler
from torch import nn

from training.ml.refl.adapters import Cond, Conditioning, DiffusionAdapter, _jsonable
from training.ml.world.model import WorldDiffusionModel


class WorldAdapter(DiffusionAdapter):
    family = "world"
    uncond_first = False  # WorldDiffusionModel.guided_prediction stacks [cond; uncond]

    def __init__(self, model: WorldDiffusionModel, source: str | None = None) -> None:
        self.model = model
        self.source = source
        self.unet = model.unet
        # The model's own sampling scheduler (same betas as training, trailing spacing, alpha_T = 1).
        self.scheduler = DDIMScheduler(**model.scheduler_config(), set_alpha_to_one=True)
        self.freeze_frozen_modules()

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"text_encoder": self.model.text_encoder}

    @torch.no_grad()
    def encode_prompts(
        self, prompts: Sequence[str], *, guided: bool, height: int, width: int
    ) -> Conditioning:
        hidden = self.model.encode_prompts(list(prompts)).to(self.dtype)
        uncond = self.model.encode_prompts([""] * len(prompts)).to(self.dtype) if guided else None
        return Conditioning(
            {"encoder_hidden_states": hidden}, None if uncond is None else {"encoder_hidden_states": uncond}
        )

    def denoise(self, unet: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return unet(x, t, encoder_hidden_states=cond["encoder_hidden_states"]).sample

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return WorldDiffusionModel.decode(latents)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return images * 2.0 - 1.0

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        return batch, 3, height, width

    @property
    def default_size(self) -> tuple[int, int]:
        size = self.model.config.image_size
        return size, size

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "source": self.source,
            "world_config": _jsonable(self.model.config.to_dict()),
            "scheduler_config": _jsonable(self.model.scheduler_config()),
        }


def load_world_adapter(path: str | os.PathLike[str]) -> WorldAdapter:
    return WorldAdapter(WorldDiffusionModel.from_pretrained(path), source=str(Path(path).resolve()))


@torch.no_grad()
def oracle_evaluator(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
    """The world's exact oracle (compositional correctness in [0, 1]) as a held-out evaluator."""
    from training.ml.world.oracle import oracle_score

    return torch.tensor([oracle_score(p, img) for p, img in zip(prompts, images.detach().cpu(), strict=True)])


def build_world_adapter_for_bench() -> tuple[WorldAdapter, str]:
    """The committed base checkpoint when it exists, else a randomly initialised model of the same size."""
    from training.ml.world.model import PRETRAINED_DIR

    if (PRETRAINED_DIR / "model.safetensors").is_file():
        return load_world_adapter(PRETRAINED_DIR), "world base model (32 px pixel space)"
    torch.manual_seed(0)
    return WorldAdapter(WorldDiffusionModel()), "world model, random init (32 px pixel space)"
