"""Composition-aware reward models (IterComp): BLIP + MLP head, listwise preference training.

Django-free. Contract for feedback learning::

    model = load_reward_model(checkpoint_dir).eval()
    scores = model.score(prompts, images)  # images [B,3,H,W] in [0,1] -> normalised scores [B]
"""

from __future__ import annotations

from training.ml.reward.checkpoint import load_reward_model, read_reward_meta, save_reward_model
from training.ml.reward.config import (
    CATEGORIES,
    AugmentConfig,
    RewardModelConfig,
    RewardTrainConfig,
    TextSpec,
    VisionSpec,
)
from training.ml.reward.data import (
    FolderImageLoader,
    GroupPair,
    ImageLoader,
    ImageRef,
    PairRecord,
    PromptGroup,
    assign_splits,
    build_groups,
    dataset_fingerprint,
    hash_split,
    read_pairs,
    write_pairs_jsonl,
)
from training.ml.reward.evaluate import evaluate_checkpoint_on_pairs, evaluate_groups
from training.ml.reward.losses import listwise_pair_loss, pair_accuracy
from training.ml.reward.model import RewardModel, build_blip_tokenizer, build_reward_model
from training.ml.reward.train import RewardData, train_reward_model

__all__ = [
    "CATEGORIES",
    "AugmentConfig",
    "FolderImageLoader",
    "GroupPair",
    "ImageLoader",
    "ImageRef",
    "PairRecord",
    "PromptGroup",
    "RewardData",
    "RewardModel",
    "RewardModelConfig",
    "RewardTrainConfig",
    "TextSpec",
    "VisionSpec",
    "assign_splits",
    "build_blip_tokenizer",
    "build_groups",
    "build_reward_model",
    "dataset_fingerprint",
    "evaluate_checkpoint_on_pairs",
    "evaluate_groups",
    "hash_split",
    "listwise_pair_loss",
    "load_reward_model",
    "pair_accuracy",
    "read_pairs",
    "read_reward_meta",
    "save_reward_model",
    "train_reward_model",
    "write_pairs_jsonl",
]
