"""Configuration of a Diffusion-DPO run (validated, JSON round-trippable via training.ml.common)."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from training.ml.refl.config import LoRASettings, MixedPrecision, OptimizerName, TrainMode

TieHandling = Literal["skip", "down_weight"]


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """Hyper-parameters of Diffusion-DPO.

    ``beta`` is the reference implementation's ``beta_dpo`` (SalesforceAIResearch/DiffusionDPO): the
    logit is ``−½·beta·[(e_θ(x_w) − e_ref(x_w)) − (e_θ(x_l) − e_ref(x_l))]`` with ``e`` the per-pixel
    *mean* squared denoising error. The paper's β·T·ω(λ_t) (T the number of training timesteps, ω = 1)
    is folded into this one number, as in the authors' code; their SD1.5/SDXL runs use 5000 (the
    diffusers example's ``beta_dpo`` drops the ½, so its 2500 is the same scale).

    Ties (label 0.5) carry no winner: ``skip`` drops them; ``down_weight`` keeps them with a soft label
    of ½ (the loss pulls the two implicit rewards together) times ``tie_weight``. ``use_pair_weights``
    multiplies each pair's loss by its ``PairRecord.weight`` (e.g. the consensus agreement).
    """

    beta: float = 5000.0
    batch_size: int = 2  # pairs per step (each pair is two denoiser rows)
    max_steps: int = 100
    learning_rate: float = 1e-5
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float | None = 1.0
    optimizer: OptimizerName = "adamw"
    ties: TieHandling = "skip"
    tie_weight: float = 0.5
    use_pair_weights: bool = False
    height: int | None = None  # None → the model's default size; pair images are resized to it
    width: int | None = None
    train_mode: TrainMode = "lora"
    lora: LoRASettings = dataclasses.field(default_factory=LoRASettings)
    gradient_checkpointing: bool = False
    mixed_precision: MixedPrecision = "no"
    seed: int = 0
    checkpoint_every: int = 0  # 0 → only the final checkpoint

    def __post_init__(self) -> None:
        if not math.isfinite(self.beta) or self.beta <= 0:
            raise ValueError(f"beta must be finite and positive, got {self.beta}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.lr_warmup_steps < 0:
            raise ValueError("lr_warmup_steps must be >= 0")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1) or self.adam_epsilon <= 0:
            raise ValueError("Adam betas must be in [0, 1) and epsilon positive")
        if self.weight_decay < 0:
            raise ValueError("weight_decay must be >= 0")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError("max_grad_norm must be positive or None")
        if self.optimizer not in ("adamw", "adamw_8bit", "adafactor"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}")
        if self.ties not in ("skip", "down_weight"):
            raise ValueError(f"ties must be 'skip' or 'down_weight', got {self.ties!r}")
        if not 0.0 < self.tie_weight <= 1.0:
            raise ValueError(f"tie_weight must be in (0, 1], got {self.tie_weight}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value < 8:
                raise ValueError(f"{name} must be >= 8, got {value}")
        if self.train_mode not in ("lora", "full"):
            raise ValueError(f"train_mode must be 'lora' or 'full', got {self.train_mode!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"unknown mixed_precision {self.mixed_precision!r}")
        if self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0")
