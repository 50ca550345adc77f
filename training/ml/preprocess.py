"""The one differentiable image preprocessing shared by reward scoring and feedback learning.

Reward models are trained on images that went through exactly this function, and ReFL back-propagates
through it into the diffusion model's decoded image, so any second implementation (e.g. a PIL resize in
a data loader) would silently score a slightly different image than the one trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

# BLIP / CLIP normalisation (what BLIP's image processor uses).
BLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
BLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

Interpolation = Literal["bilinear", "bicubic"]
# PIL resample codes found in HF preprocessor_config.json files.
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    image_size: int = 384
    mean: tuple[float, float, float] = BLIP_MEAN
    std: tuple[float, float, float] = BLIP_STD
    interpolation: Interpolation = "bicubic"
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need three channels")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be bilinear or bicubic, got {self.interpolation!r}")
        # JSON round trips turn tuples into lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))


def check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"expected float images in [0, 1], got dtype {images.dtype}")


def resize_images(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Resize ``[B,3,H,W]`` images in [0,1] to the model's square size (no-op when already there).

    Bicubic overshoots slightly beyond [0,1]; clamping mirrors what PIL does on uint8 images. The clamp
    only zeroes gradients of pixels that overshoot, which is what the score really depends on.
    """
    check_images(images)
    size = config.image_size
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(
        images,
        size=(size, size),
        mode=config.interpolation,
        align_corners=False,
        antialias=config.antialias,
    )
    return out.clamp(0.0, 1.0) if config.interpolation == "bicubic" else out


def normalize_images(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    mean = torch.tensor(config.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def preprocess_images(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """``[B,3,H,W]`` float in [0,1] → model pixel values; differentiable w.r.t. ``images``."""
    return normalize_images(resize_images(images, config), config)


def preprocess_config_from_folder(
    folder: str | os.PathLike[str], fallback_size: int | None = None
) -> PreprocessConfig:
    """Read a HuggingFace ``preprocessor_config.json`` (BLIP image processor) from a local folder."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        if fallback_size is None:
            raise FileNotFoundError(f"{path} not found and no fallback image size given")
        return PreprocessConfig(image_size=fallback_size)
    data = json.loads(path.read_text())
    size = data.get("size", fallback_size)
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    if size is None:
        raise ValueError(f"{path}: no image size")
    return PreprocessConfig(
        image_size=int(size),
        mean=tuple(data.get("image_mean", BLIP_MEAN)),
        std=tuple(data.get("image_std", BLIP_STD)),
        interpolation=_PIL_RESAMPLE.get(int(data.get("resample", 3)), "bicubic"),
    )
