"""A tiny BLIP image-text-matching model saved as a local folder, the way a real BLIP checkpoint is laid out
(weights, BERT tokenizer from the committed fixture vocabulary, image processor config)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_tiny_blip_itm(folder: Path, seed: int = 0, image_std: float | None = None):
    """Write a 2-layer, 32-wide BLIP ITM model (32 px images, patch 8) to ``folder``; returns the model."""
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipTextConfig, BlipVisionConfig

    from training.ml.reward.model import build_blip_tokenizer

    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    vision = BlipVisionConfig(**sizes, image_size=32, patch_size=8, initializer_range=0.02)
    text = BlipTextConfig(**sizes, vocab_size=30524, max_position_embeddings=64)
    torch.manual_seed(seed)
    blip = BlipForImageTextRetrieval(BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict()))
    blip.save_pretrained(folder)
    build_blip_tokenizer().save_pretrained(folder)
    processor = {
        "image_processor_type": "BlipImageProcessor",
        "size": {"height": 32, "width": 32},
        "resample": 3,
    }
    if image_std is not None:
        processor.update(image_mean=[0.5, 0.5, 0.5], image_std=[image_std] * 3)
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps(processor))
    return blip
