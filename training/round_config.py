"""A training round's hyperparameters (Django-free), with IterComp's defaults.

Validated on construction; stored as JSON on the round and inside every checkpoint it writes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

SYNTHETIC_BASE = "synthetic-world"


@dataclass(frozen=True)
class RewardStageConfig:
    epochs: int = 2
    learning_rate: float = 1e-5
    batch_prompts: int = 8
    freeze_fraction: float = 0.7
    # Train on mid-trajectory x0 predictions as well as final samples (the images ReFL scores).
    include_x0_predictions: bool = True

    def __post_init__(self) -> None:
        _check(1 <= self.epochs <= 100, "reward epochs must be between 1 and 100")
        _check(0 < self.learning_rate < 1, "reward learning rate must be in (0, 1)")
        _check(1 <= self.batch_prompts <= 1024, "reward batch must be between 1 and 1024 prompts")
        _check(0 <= self.freeze_fraction < 1, "freeze fraction must be in [0, 1)")


@dataclass(frozen=True)
class FeedbackStageConfig:
    steps: int = 60
    learning_rate: float = 1e-5
    sampling_steps: int = 40
    # The random stop step is drawn from the last `late_steps` of `sampling_steps` (paper: last 10 of 40).
    late_steps: int = 10
    guidance_scale: float = 3.0
    reward_scale: float = 1e-3
    lora: bool = True
    lora_rank: int = 4
    pretrain_loss_weight: float = 1.0
    guard_every: int = 10

    def __post_init__(self) -> None:
        _check(1 <= self.steps <= 100_000, "feedback steps must be between 1 and 100000")
        _check(0 < self.learning_rate < 1, "feedback learning rate must be in (0, 1)")
        _check(2 <= self.sampling_steps <= 1000, "sampling steps must be between 2 and 1000")
        _check(
            1 <= self.late_steps <= self.sampling_steps, "late steps must be between 1 and the sampling steps"
        )
        _check(self.guidance_scale >= 1, "guidance scale must be at least 1")
        _check(self.reward_scale > 0, "reward scale must be positive")
        _check(1 <= self.lora_rank <= 256, "LoRA rank must be between 1 and 256")
        _check(self.pretrain_loss_weight >= 0, "pretraining loss weight cannot be negative")
        _check(self.guard_every >= 1, "guard interval must be at least 1 step")


@dataclass(frozen=True)
class PushBackConfig:
    samples_per_prompt: int = 2
    # Share of prompts whose new samples go to the experts as a new ranking task.
    share_of_prompts: float = 0.25
    max_images_per_task: int = 8
    prompts_per_category: int = 64

    def __post_init__(self) -> None:
        _check(
            1 <= self.samples_per_prompt <= 2,
            "at most 2 new samples per prompt (tasks hold at most 8 images)",
        )
        _check(0 <= self.share_of_prompts <= 1, "share of prompts must be in [0, 1]")
        _check(2 <= self.max_images_per_task <= 8, "a task holds between 2 and 8 images")
        _check(1 <= self.prompts_per_category <= 100_000, "prompts per category must be positive")


@dataclass(frozen=True)
class RoundConfig:
    base_model: str = SYNTHETIC_BASE
    seed: int = 0
    reward: RewardStageConfig = field(default_factory=RewardStageConfig)
    feedback: FeedbackStageConfig = field(default_factory=FeedbackStageConfig)
    push_back: PushBackConfig = field(default_factory=PushBackConfig)

    def __post_init__(self) -> None:
        _check(bool(self.base_model), "name a base model: a local diffusers folder or the synthetic world")
        _check(0 <= self.seed < 2**31, "seed must be a non-negative 31-bit integer")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RoundConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        _check(not unknown, f"unknown round settings: {', '.join(unknown)}")
        return cls(
            base_model=data.get("base_model", SYNTHETIC_BASE),
            seed=data.get("seed", 0),
            reward=_sub(RewardStageConfig, data.get("reward", {})),
            feedback=_sub(FeedbackStageConfig, data.get("feedback", {})),
            push_back=_sub(PushBackConfig, data.get("push_back", {})),
        )


class RoundConfigError(ValueError):
    pass


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RoundConfigError(message)


def _sub(cls, data: dict):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    _check(not unknown, f"unknown {cls.__name__} settings: {', '.join(unknown)}")
    return cls(**data)
