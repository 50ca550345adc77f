from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from training.ml.preprocess import (
    BLIP_MEAN,
    BLIP_STD,
    PreprocessConfig,
    preprocess_config_from_folder,
    preprocess_images,
    resize_images,
)

torch.set_num_threads(1)


def test_preprocess_resizes_with_antialias_and_normalises_with_model_stats():
    config = PreprocessConfig(image_size=16, interpolation="bilinear")
    images = torch.rand(2, 3, 40, 30)
    out = preprocess_images(images, config)
    expected = F.interpolate(images, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(BLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(BLIP_STD).view(1, 3, 1, 1)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, (expected - mean) / std, atol=1e-6)


def test_images_already_at_model_size_are_not_resampled():
    images = torch.rand(1, 3, 16, 16)
    assert resize_images(images, PreprocessConfig(image_size=16)) is images


def test_bicubic_overshoot_is_clamped_to_the_unit_range():
    checker = (torch.arange(64).view(8, 8) % 2).float().expand(1, 3, 8, 8).contiguous()
    out = resize_images(checker, PreprocessConfig(image_size=29, interpolation="bicubic"))
    assert out.min() >= 0 and out.max() <= 1


def test_preprocessing_is_differentiable_wrt_pixels():
    images = torch.rand(1, 3, 24, 24, dtype=torch.float64, requires_grad=True)
    config = PreprocessConfig(image_size=16, interpolation="bilinear")
    assert torch.autograd.gradcheck(lambda x: preprocess_images(x, config).sum(dim=(2, 3)), (images,))


def test_bad_inputs_and_configs_are_refused():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        preprocess_images(torch.rand(3, 8, 8), PreprocessConfig(image_size=4))
    with pytest.raises(TypeError, match="float"):
        preprocess_images(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), PreprocessConfig(image_size=4))
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessConfig(interpolation="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="std"):
        PreprocessConfig(std=(1.0, 0.0, 1.0))


def test_reads_a_hf_blip_preprocessor_config(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "size": {"height": 384, "width": 384},
                "resample": 2,
                "image_mean": [0.1, 0.2, 0.3],
                "image_std": [1, 2, 3],
            }
        )
    )
    config = preprocess_config_from_folder(tmp_path)
    assert config == PreprocessConfig(
        image_size=384, mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 3.0), interpolation="bilinear"
    )
    assert preprocess_config_from_folder(tmp_path / "missing", fallback_size=224).image_size == 224
