"""Degrade clean renders the way diffusion samples are degraded: colour cast, blur, blotches, noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from .scene import to_pil


@dataclass(frozen=True)
class DegradeConfig:
    cast: tuple[float, float] = (0.85, 1.05)  # per-channel gain range (tinted background and objects)
    blur_sigma: tuple[float, float] = (0.3, 0.8)  # pixels at 32 px, scaled with the image
    blotch_amplitude: tuple[float, float] = (0.0, 0.05)  # smooth low-frequency background variation
    noise_sigma: tuple[float, float] = (0.01, 0.05)

    def __post_init__(self) -> None:
        for name in ("cast", "blur_sigma", "blotch_amplitude", "noise_sigma"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be an ordered non-negative range")


DEFAULT_DEGRADE = DegradeConfig()


def degrade_array(
    img: np.ndarray, rng: np.random.Generator, config: DegradeConfig = DEFAULT_DEGRADE
) -> np.ndarray:
    """HWC float [0, 1] -> degraded HWC float [0, 1]."""
    size = img.shape[0]
    scale = size / 32
    out = img * rng.uniform(*config.cast, size=3)[None, None, :]
    sigma = rng.uniform(*config.blur_sigma) * scale
    if sigma > 0:
        out = ndimage.gaussian_filter(out, sigma=(sigma, sigma, 0))
    amplitude = rng.uniform(*config.blotch_amplitude)
    if amplitude > 0:
        field = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma=size / 6)
        field /= max(float(np.abs(field).max()), 1e-6)
        out = out + amplitude * field[..., None]
    out = out + rng.normal(0.0, rng.uniform(*config.noise_sigma), size=out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def degrade(image: Any, rng: np.random.Generator, config: DegradeConfig = DEFAULT_DEGRADE) -> Any:
    """Degrade a PIL image (returns PIL) or an HWC float array in [0, 1] (returns an array)."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return to_pil(degrade_array(arr, rng, config))
    return degrade_array(np.asarray(image, dtype=np.float32), rng, config)
