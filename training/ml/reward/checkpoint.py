"""Self-describing reward-model checkpoints.

A checkpoint directory holds ``model.safetensors`` (all weights plus the score normalisation buffers),
``checkpoint.json`` (the RewardModelConfig, the concrete BLIP configs, preprocessing, normalisation,
metrics, the dataset hash and counts) and ``tokenizer/``. Loading needs nothing else — not even the
BLIP folder the model was first built from.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from training.ml.common import (
    CheckpointError,
    config_from_dict,
    config_to_dict,
    diff_configs,
    load_state_strict,
    load_weights,
    read_checkpoint_meta,
    save_checkpoint,
)
from training.ml.preprocess import PreprocessConfig
from training.ml.reward.config import RewardModelConfig
from training.ml.reward.model import RewardModel, build_blip_tokenizer, build_from_backbone_configs

KIND = "itercomp.reward_model"
# Where the initial weights came from does not change the model; a moved BLIP folder must still load.
_IGNORED_FOR_MATCH = ("pretrained_path",)


def save_reward_model(
    model: RewardModel,
    directory: str | os.PathLike[str],
    *,
    metrics: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    preprocess = model.preprocess
    metadata = {
        "category": model.config.category,
        "backbone": model.backbone_configs(),
        "preprocess": dataclasses.asdict(preprocess),
        "normalization": {"mean": float(model.score_mean), "std": float(model.score_std)},
        "metrics": metrics or {},
        "dataset": dataset or {},
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "versions": _versions(),
        **(extra or {}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tokenizer"
        model.tokenizer.save_pretrained(str(tok_dir))
        return save_checkpoint(
            directory,
            model.state_dict(),
            kind=KIND,
            config=config_to_dict(model.config),
            metadata=metadata,
            extra_files={"tokenizer": tok_dir},
        )


def _versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _IGNORED_FOR_MATCH}


def read_reward_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    return read_checkpoint_meta(directory, kind=KIND)


def load_reward_model(
    directory: str | os.PathLike[str],
    expected: RewardModelConfig | None = None,
    device: str | torch.device = "cpu",
) -> RewardModel:
    """Load a checkpoint; with ``expected``, refuse one whose config differs (naming the fields)."""
    meta = read_reward_meta(directory)
    stored = meta["config"]
    if expected is not None:
        differences = diff_configs(_comparable(config_to_dict(expected)), _comparable(stored))
        if differences:
            raise CheckpointError(
                f"{directory}: reward model config does not match the expected one: " + "; ".join(differences)
            )
    try:
        config = config_from_dict(RewardModelConfig, stored)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory}: invalid reward model config: {exc}") from exc
    tokenizer = build_blip_tokenizer(Path(directory) / "tokenizer")
    preprocess = config_from_dict(PreprocessConfig, meta["metadata"]["preprocess"])
    model = build_from_backbone_configs(config, meta["metadata"]["backbone"], tokenizer, preprocess)
    load_state_strict(model, load_weights(directory), where=str(directory))
    model.freeze(config.freeze_fraction)
    return model.to(device).eval()
