"""The one configuration of an Algorithm 1 round (Django-free, torch-free: the web form builds it).

The app's round form fills it, ``python -m training.ml.loop`` and ``bench/refl_loop.py`` build it from
flags, and :mod:`training.ml.algorithm1.steps` turns it into the reward-training, ReFL and Diffusion-DPO
configs in one place. ``objective`` picks how p_k becomes p_{k+1}: ``"refl"`` (reward feedback learning
on the reward models), ``"dpo"`` (Diffusion-DPO straight from the experts' pairs, no reward model) or
``"raft"`` (reward-ranked fine-tuning: the denoising loss on the best of N samples of p_k per prompt, as
the reward models rank them). Validated on construction; stored as JSON on the round and inside every checkpoint it produces.
Every field is read by a step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SYNTHETIC_BASE = "synthetic-world"

# Settings that earlier versions stored and no step ever read; dropped when an old round is loaded.
RETIRED_SETTINGS: dict[str, frozenset[str]] = {"reward": frozenset({"include_x0_predictions"})}
# Settings added later, with the value that describes what rounds stored before them actually ran.
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {"reward": {"backbone": "scratch"}}
BACKBONES: tuple[str, ...] = ("pretrained", "scratch")
# The reward models' score head: "mlp" is IterComp/ImageReward's MLP on a fresh initialisation; "itm" adds the
# pretrained BLIP's image-text-matching head, so the score starts as its matching margin (pretrained only).
REWARD_HEADS: tuple[str, ...] = ("mlp", "itm")


@dataclass(frozen=True)
class RewardStageConfig:
    # "pretrained": the reward models start from a pretrained BLIP, part of it frozen, as IterComp does
    # (the synthetic world's committed encoder, or the worker's REWARD_BLIP_PATH for a diffusers base);
    # "scratch": a from-scratch BLIP of the sizes below.
    backbone: str = "pretrained"
    epochs: int = 2
    learning_rate: float = 1e-5
    batch_prompts: int = 8
    # Share of a pretrained BLIP's layers kept frozen (IterComp: 70 %); a from-scratch backbone trains whole.
    freeze_fraction: float = 0.7
    head: str = "mlp"
    # The from-scratch BLIP used when the worker names no pretrained folder (the synthetic world, CPU tests):
    # 32-wide attention heads, images resized to image_size and cut into patch_size patches.
    hidden_size: int = 128
    layers: int = 4
    image_size: int = 32
    patch_size: int = 8
    # Share of the pair data's prompts (those without a pinned split) that choose the best epoch.
    validation_share: float = 0.1
    # Share of the prompts with expert-ranked pairs of the current model's own samples whose pairs are held
    # out of training to measure the gate (reward accuracy on the model's own samples).
    gate_share: float = 0.5

    def __post_init__(self) -> None:
        _check(self.backbone in BACKBONES, f"reward backbone must be one of {', '.join(BACKBONES)}")
        _check(1 <= self.epochs <= 100, "reward epochs must be between 1 and 100")
        _check(0 < self.learning_rate < 1, "reward learning rate must be in (0, 1)")
        _check(1 <= self.batch_prompts <= 1024, "reward batch must be between 1 and 1024 prompts")
        _check(0 <= self.freeze_fraction < 1, "freeze fraction must be in [0, 1)")
        _check(self.head in REWARD_HEADS, f"reward head must be one of {', '.join(REWARD_HEADS)}")
        _check(
            self.head == "mlp" or self.backbone == "pretrained",
            "the 'itm' reward head needs the pretrained backbone (a from-scratch BLIP has no matching head)",
        )
        _check(
            32 <= self.hidden_size <= 4096 and self.hidden_size % 32 == 0, "reward hidden size: 32..4096, x32"
        )
        _check(1 <= self.layers <= 48, "reward layers must be between 1 and 48")
        _check(8 <= self.image_size <= 1024, "reward image size must be between 8 and 1024")
        _check(
            self.image_size % self.patch_size == 0, "reward image size must be a multiple of the patch size"
        )
        _check(0 < self.validation_share < 1, "reward validation share must be in (0, 1)")
        _check(0 < self.gate_share < 1, "reward gate share must be in (0, 1)")


@dataclass(frozen=True)
class FeedbackStageConfig:
    steps: int = 60
    learning_rate: float = 1e-5
    sampling_steps: int = 40
    # The random stop step is drawn from the last `late_steps` of `sampling_steps` (paper: last 10 of 40).
    late_steps: int = 10
    guidance_scale: float = 3.0
    reward_scale: float = 1e-3
    batch_size: int = 2
    weight_decay: float = 0.0
    lora: bool = True
    lora_rank: int = 4
    # Denoising loss on correct (world) or expert-preferred (gallery) images, mixed into every step.
    pretrain_loss_weight: float = 1.0
    pretrain_images: int = 256
    # Hacking guard: held-out evaluation every `guard_every` steps (0: off), stop after `guard_patience`
    # divergences. It needs a held-out evaluator (the synthetic world's oracle; none for a diffusers base).
    guard_every: int = 10
    guard_patience: int = 3
    # "paired": a checkpoint is kept only when its per-prompt gain over step 0 (same noise, guard_seeds
    # samples per validation prompt) has a 95 % lower bound above 0; "best_mean": any higher mean.
    guard_rule: str = "paired"
    guard_seeds: int = 3
    # Each image is scored by the reward model of its prompt's category only (IterComp trains one reward
    # model per category; the other two never saw such prompts). Off: every image by every model, summed.
    route_rewards: bool = True
    # The gate before ReFL (training.ml.algorithm1.gate): "require" — every reward model must be shown to
    # rank the current model's own samples above chance (95 % lower bound > 0.5); "measured" — the same
    # where own-sample pairs exist, and a category without any passes with a note; "off".
    gate: str = "measured"
    # Training prompts per category (deterministic choice among the train split); validation prompts
    # per category for the guard.
    prompts_per_category: int = 64
    validation_prompts_per_category: int = 16
    # Exponential moving average of the fine-tuned weights (None: off): the guard evaluates, and the
    # checkpoint deploys, the average. The world's base model is itself the EMA (0.995) of its pretraining
    # weights; small-batch fine-tuning without one adds the optimiser's step noise to every sample.
    ema_decay: float | None = None
    # Linear learning-rate warm-up over the first steps (0: none). Fine-tuning starts Adam with empty
    # moments on a converged model, whose first updates are about ``learning_rate`` on every weight.
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        _check(0 <= self.warmup_steps <= 100_000, "warm-up steps must be between 0 and 100000")
        _check(1 <= self.steps <= 100_000, "feedback steps must be between 1 and 100000")
        _check(
            self.ema_decay is None or 0 < self.ema_decay < 1,
            "EMA decay must be in (0, 1), or unset to fine-tune without an average",
        )
        _check(0 < self.learning_rate < 1, "feedback learning rate must be in (0, 1)")
        _check(2 <= self.sampling_steps <= 1000, "sampling steps must be between 2 and 1000")
        _check(
            1 <= self.late_steps <= self.sampling_steps, "late steps must be between 1 and the sampling steps"
        )
        _check(self.guidance_scale >= 1, "guidance scale must be at least 1")
        # 0 is the pretraining-loss-only control: the same steps, images and schedule without the rewards.
        _check(self.reward_scale >= 0, "reward scale cannot be negative")
        _check(
            self.reward_scale > 0 or self.pretrain_loss_weight > 0,
            "with reward scale 0 only the pretraining loss trains (the control run); give it a positive weight",
        )
        _check(1 <= self.batch_size <= 256, "feedback batch must be between 1 and 256")
        _check(self.weight_decay >= 0, "weight decay cannot be negative")
        _check(1 <= self.lora_rank <= 256, "LoRA rank must be between 1 and 256")
        _check(self.pretrain_loss_weight >= 0, "pretraining loss weight cannot be negative")
        _check(
            self.pretrain_loss_weight == 0 or self.pretrain_images >= 1,
            "a pretraining loss needs pretraining images",
        )
        _check(self.guard_every >= 0, "guard interval cannot be negative (0 turns the guard off)")
        _check(self.guard_patience >= 1, "guard patience must be at least 1")
        _check(self.guard_rule in ("paired", "best_mean"), "guard rule must be 'paired' or 'best_mean'")
        _check(1 <= self.guard_seeds <= 64, "guard seeds must be between 1 and 64")
        _check(self.gate in ("require", "measured", "off"), "gate must be 'require', 'measured' or 'off'")
        _check(1 <= self.prompts_per_category <= 100_000, "feedback prompts per category must be positive")
        _check(1 <= self.validation_prompts_per_category <= 100_000, "validation prompts must be positive")


@dataclass(frozen=True)
class PushBackConfig:
    samples_per_prompt: int = 2
    # Share of prompts whose new samples go to the experts as a new ranking task.
    share_of_prompts: float = 0.25
    max_images_per_task: int = 8
    # Prompts per category sampled by the fine-tuned model and inserted into their rankings.
    prompts_per_category: int = 64

    def __post_init__(self) -> None:
        _check(
            1 <= self.samples_per_prompt <= 2,
            "at most 2 new samples per prompt (tasks hold at most 8 images)",
        )
        _check(0 <= self.share_of_prompts <= 1, "share of prompts must be in [0, 1]")
        _check(2 <= self.max_images_per_task <= 8, "a task holds between 2 and 8 images")
        _check(1 <= self.prompts_per_category <= 100_000, "prompts per category must be positive")


OBJECTIVES = ("refl", "dpo", "raft")
DPO_PAIR_SOURCES = ("own", "gallery", "both")


@dataclass(frozen=True)
class RaftStageConfig:
    """Reward-ranked fine-tuning (RAFT, Dong et al. 2023): p_k draws ``candidates`` samples for each of
    the feedback prompts, the reward models (routed by category as in ReFL) keep the best one, and the
    denoising loss trains p_{k+1} on the kept samples. Steps, learning rate, batch, LoRA, guidance,
    sampling steps, the gate and the guard come from the ``feedback`` section (the candidates' guidance
    too, unless ``guidance_scale`` sets it), so the objectives spend the
    same budget; the reward scale, late steps and pretraining images are ReFL's and unread here."""

    candidates: int = 4
    # Share of the kept samples' captions replaced by the empty prompt in the denoising loss, so the
    # unconditional branch that guidance subtracts moves with the conditional one (the world's pretraining
    # drops 10 %; without it, training on guided samples and sampling them with guidance again compounds it).
    caption_dropout: float = 0.1
    # Guidance scale the candidates are drawn at; None: the feedback section's (the guidance users sample
    # at). The denoising loss trains the conditional branch, which guidance then amplifies at sampling:
    # candidates drawn at guidance 1 are samples of that branch, chosen; guided candidates put the guidance
    # into the branch and sampling with guidance again applies it twice.
    guidance_scale: float | None = None
    # The denoising loss trains on timesteps in [noise_floor · T, T): 0 trains every noise level as
    # pretraining does; a higher floor only the noisy ones, where the layout the rewards chose is decided.
    noise_floor: float = 0.0

    def __post_init__(self) -> None:
        _check(0 <= self.noise_floor < 1, "RAFT's noise floor must be in [0, 1)")
        _check(2 <= self.candidates <= 64, "reward-ranked fine-tuning needs between 2 and 64 candidates")
        _check(0 <= self.caption_dropout < 1, "caption dropout must be in [0, 1)")
        _check(
            self.guidance_scale is None or (math.isfinite(self.guidance_scale) and self.guidance_scale >= 1),
            "RAFT's candidate guidance must be at least 1 (or unset: the round's guidance)",
        )


@dataclass(frozen=True)
class DPOStageConfig:
    """Diffusion-DPO's own settings; steps, learning rate, batch (pairs), weight decay and LoRA come from
    the ``feedback`` section, so ReFL and DPO rounds spend the same fine-tuning budget."""

    # The authors' beta_dpo (β·T folded into one number; 5000 in their SD1.5/SDXL runs).
    beta: float = 5000.0
    # Which expert-ranked (human-source) pairs train: "own" — pairs with at least one of the current
    # model's (p_k's) samples, i.e. the push-back rankings (online DPO); "gallery" — pairs of the other
    # images only; "both". Model-source pairs (a reward model's provisional placement) never train DPO.
    pair_source: str = "both"
    # Expert ties: "skip", or "down_weight" (soft label ½ times tie_weight).
    ties: str = "skip"
    tie_weight: float = 0.5
    # Multiply each pair's loss by its stored weight (the share of experts who agree with its order).
    pair_weights: bool = False
    # Share of the prompts without a split (the loop's) whose pairs are held out to measure the implicit
    # reward accuracy; in the app every prompt has one: val-split pairs are held out, test-split never used.
    heldout_share: float = 0.1

    def __post_init__(self) -> None:
        _check(math.isfinite(self.beta) and self.beta > 0, "DPO beta must be positive")
        _check(self.pair_source in DPO_PAIR_SOURCES, "DPO pair source must be 'own', 'gallery' or 'both'")
        _check(self.ties in ("skip", "down_weight"), "DPO ties must be 'skip' or 'down_weight'")
        _check(0 < self.tie_weight <= 1, "DPO tie weight must be in (0, 1]")
        _check(0 <= self.heldout_share < 1, "DPO held-out share must be in [0, 1)")


@dataclass(frozen=True)
class RoundConfig:
    base_model: str = SYNTHETIC_BASE
    seed: int = 0
    # How p_k becomes p_{k+1}: "refl" (reward feedback learning), "dpo" (Diffusion-DPO on the pairs) or
    # "raft" (the denoising loss on the reward models' best of N samples).
    objective: str = "refl"
    reward: RewardStageConfig = field(default_factory=RewardStageConfig)
    feedback: FeedbackStageConfig = field(default_factory=FeedbackStageConfig)
    push_back: PushBackConfig = field(default_factory=PushBackConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
    raft: RaftStageConfig = field(default_factory=RaftStageConfig)

    def __post_init__(self) -> None:
        _check(bool(self.base_model), "name a base model: a local diffusers folder or the synthetic world")
        _check(0 <= self.seed < 2**31, "seed must be a non-negative 31-bit integer")
        _check(
            self.objective in OBJECTIVES,
            "objective must be 'refl' (ReFL), 'dpo' (Diffusion-DPO) or 'raft' (reward-ranked fine-tuning)",
        )
        _check(
            self.objective != "dpo" or self.feedback.ema_decay is None,
            "Diffusion-DPO keeps no weight average: leave the EMA decay unset for a DPO round",
        )

    @property
    def is_synthetic(self) -> bool:
        return self.base_model == SYNTHETIC_BASE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        _check(not unknown, f"unknown round settings: {', '.join(unknown)}")
        return cls(
            base_model=data.get("base_model", SYNTHETIC_BASE),
            seed=data.get("seed", 0),
            # Rounds stored before the objective existed were ReFL rounds.
            objective=data.get("objective", "refl"),
            reward=_sub(RewardStageConfig, data.get("reward", {}), "reward"),
            feedback=_sub(FeedbackStageConfig, data.get("feedback", {}), "feedback"),
            push_back=_sub(PushBackConfig, data.get("push_back", {}), "push_back"),
            dpo=_sub(DPOStageConfig, data.get("dpo", {}), "dpo"),
            raft=_sub(RaftStageConfig, data.get("raft", {}), "raft"),
        )


class RoundConfigError(ValueError):
    pass


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RoundConfigError(message)


def _sub(cls, data: dict[str, Any], section: str):
    data = {k: v for k, v in data.items() if k not in RETIRED_SETTINGS.get(section, frozenset())}
    data = {**LEGACY_DEFAULTS.get(section, {}), **data}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    _check(not unknown, f"unknown {cls.__name__} settings: {', '.join(unknown)}")
    return cls(**data)
