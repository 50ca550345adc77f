"""Training-time image augmentation in plain tensor code (torchvision is not installed).

All operations keep the image in [0,1] and its size unchanged. Horizontal flips are off by default:
a flipped "cube left of a ball" is a "cube right of a ball", so flips corrupt spatial preferences.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.ml.reward.config import AugmentConfig


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def random_resized_crop(
    image: torch.Tensor, scale: tuple[float, float], gen: torch.Generator
) -> torch.Tensor:
    """Crop a random square-aspect area fraction in ``scale`` and resize back to the input size."""
    _, h, w = image.shape
    area = _uniform(gen, *scale)
    side = math.sqrt(area)
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    if (ch, cw) == (h, w):
        return image
    top = int(torch.randint(0, h - ch + 1, (), generator=gen))
    left = int(torch.randint(0, w - cw + 1, (), generator=gen))
    crop = image[:, top : top + ch, left : left + cw].unsqueeze(0)
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]


def color_jitter(
    image: torch.Tensor, brightness: float, contrast: float, saturation: float, gen: torch.Generator
) -> torch.Tensor:
    if brightness:
        image = image * _uniform(gen, 1 - brightness, 1 + brightness)
    if contrast:
        mean = image.mean()
        image = (image - mean) * _uniform(gen, 1 - contrast, 1 + contrast) + mean
    if saturation:
        # ITU-R 601 luma, as PIL's "L" conversion.
        gray = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)
        image = (image - gray) * _uniform(gen, 1 - saturation, 1 + saturation) + gray
    return image


def augment_image(image: torch.Tensor, config: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """``[3,H,W]`` in [0,1] → augmented ``[3,H,W]`` in [0,1]."""
    if config.crop_scale != (1.0, 1.0):
        image = random_resized_crop(image, config.crop_scale, gen)
    if config.hflip and torch.rand((), generator=gen).item() < 0.5:
        image = image.flip(-1)
    image = color_jitter(image, config.brightness, config.contrast, config.saturation, gen)
    if config.noise_std:
        image = image + config.noise_std * torch.randn(image.shape, generator=gen)
    return image.clamp(0.0, 1.0)
