"""Configuration of a multi-reward ReFL run (validated, JSON round-trippable via training.ml.common)."""

from __future__ import annotations

import dataclasses
from typing import Literal

PhiName = Literal["relu_margin", "softplus_margin", "linear"]
TrainMode = Literal["lora", "full"]
OptimizerName = Literal["adamw", "adamw_8bit", "adafactor"]
MixedPrecision = Literal["no", "fp16", "bf16"]


@dataclasses.dataclass(frozen=True)
class LoRASettings:
    """Low-rank adapters on the UNet's attention projections; a small rank is itself a regulariser."""

    rank: int = 4
    alpha: float | None = None  # None → alpha = rank (scale 1)
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoRA needs at least one target module")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))


@dataclasses.dataclass(frozen=True)
class GuardConfig:
    """Reward-hacking guard: score the current model with a held-out evaluator every ``every`` steps.

    A divergence is an evaluation where the optimised reward is above its value at the best-so-far
    evaluation (by held-out score) by more than ``min_reward_rise`` while the held-out score is below the
    best by more than ``min_heldout_drop``. ``patience`` consecutive divergences stop the run and roll the
    weights back to the best evaluation. Comparing against the best rather than the previous evaluation
    keeps one noisy evaluation from either triggering or resetting the guard.
    """

    every: int = 10  # 0 disables the guard
    patience: int = 2
    min_reward_rise: float = 0.0
    min_heldout_drop: float = 0.0
    num_inference_steps: int | None = None  # None → the training T
    seed: int = 1234  # fixed evaluation noise so evaluations differ only by the weights
    restore_best_at_end: bool = True  # keep the checkpoint chosen by the held-out signal
    # Samples per validation prompt (each on its own fixed noise).
    seeds: int = 1
    # "best_mean": any evaluation with a higher mean held-out score becomes the best. "paired": an
    # evaluation is compared with step 0 on the same noise, prompt by prompt, and becomes the best only when
    # the lower end of the interval mean ± z·SE of the per-prompt difference is above 0 (and its mean gain
    # beats the best so far) — a noisy rise on a small validation set is not kept.
    rule: Literal["best_mean", "paired"] = "best_mean"
    z: float = 1.96

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"guard.every must be >= 0, got {self.every}")
        if self.patience < 1:
            raise ValueError(f"guard.patience must be >= 1, got {self.patience}")
        if self.min_reward_rise < 0 or self.min_heldout_drop < 0:
            raise ValueError("guard thresholds must be non-negative")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ValueError("guard.num_inference_steps must be >= 1")
        if self.seeds < 1:
            raise ValueError(f"guard.seeds must be >= 1, got {self.seeds}")
        if self.rule not in ("best_mean", "paired"):
            raise ValueError(f"unknown guard rule {self.rule!r}")
        if self.z <= 0:
            raise ValueError("guard.z must be positive")

    @property
    def enabled(self) -> bool:
        return self.every > 0


@dataclasses.dataclass(frozen=True)
class ReFLConfig:
    """Hyper-parameters of multi-reward ReFL.

    Loss per step: ``reward_scale · Σ_i w_i · mean φ(R_i) + pretrain_loss_weight · L_denoise
    + kl_weight · ||ε_θ − ε_ref||²``. Defaults follow ImageReward's ReFL (T=40, stop in the last 10
    steps, φ = ReLU(2 − r), reward scale 1e-3 next to an unscaled pretraining loss, lr 1e-5).
    """

    num_inference_steps: int = 40
    late_steps: int = 10  # the grad step is drawn uniformly from the last ``late_steps`` of T
    guidance_scale: float = 1.0  # > 1 turns classifier-free guidance on (sampling and the grad step)
    eta: float = 0.0  # DDIM eta; 0 = deterministic
    height: int | None = None  # None → the model's default size
    width: int | None = None
    batch_size: int = 2
    max_steps: int = 100
    learning_rate: float = 1e-5
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float | None = 1.0
    optimizer: OptimizerName = "adamw"
    phi: PhiName = "relu_margin"
    phi_margin: float = 2.0
    reward_scale: float = 1e-3  # λ
    pretrain_loss_weight: float = 0.0  # > 0 needs pretraining (prompt, image) data
    pretrain_batch_size: int | None = None  # None → batch_size
    # Share of the denoising loss's captions replaced by the empty prompt, so the unconditional branch that
    # classifier-free guidance subtracts learns from the same images (as in pretraining); 0 trains the
    # conditional branch alone.
    caption_dropout: float = 0.0
    # The denoising loss's timesteps are drawn from [floor · T, T) instead of [0, T): 0 is pretraining's
    # uniform draw; a higher floor spends every step on the noise levels where a sample's layout (which
    # object where, in which colour) is decided, none on the fine detail the last steps add.
    pretrain_noise_floor: float = 0.0
    kl_weight: float = 0.0  # penalty on the distance to the frozen reference model's prediction
    train_mode: TrainMode = "lora"
    lora: LoRASettings = dataclasses.field(default_factory=LoRASettings)
    gradient_checkpointing: bool = False
    ema_decay: float | None = None  # None disables EMA; guard evaluations and export then use raw weights
    mixed_precision: MixedPrecision = "no"
    seed: int = 0
    checkpoint_every: int = 0  # 0 → only the final checkpoint
    guard: GuardConfig = dataclasses.field(default_factory=GuardConfig)

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not 1 <= self.late_steps <= self.num_inference_steps:
            raise ValueError(
                f"late_steps must be in [1, num_inference_steps={self.num_inference_steps}], got {self.late_steps}"
            )
        if self.guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1 = no guidance), got {self.guidance_scale}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value < 8:
                raise ValueError(f"{name} must be >= 8, got {value}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.learning_rate <= 0:
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
        if self.phi not in ("relu_margin", "softplus_margin", "linear"):
            raise ValueError(f"unknown phi {self.phi!r}")
        if self.reward_scale < 0 or self.pretrain_loss_weight < 0 or self.kl_weight < 0:
            raise ValueError("loss weights must be non-negative")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if not 0 <= self.pretrain_noise_floor < 1:
            raise ValueError(f"pretrain_noise_floor must be in [0, 1), got {self.pretrain_noise_floor}")
        if self.pretrain_batch_size is not None and self.pretrain_batch_size < 1:
            raise ValueError("pretrain_batch_size must be >= 1")
        if self.train_mode not in ("lora", "full"):
            raise ValueError(f"train_mode must be 'lora' or 'full', got {self.train_mode!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"unknown mixed_precision {self.mixed_precision!r}")
        if self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0")

    @property
    def stop_step_range(self) -> tuple[int, int]:
        """Inclusive range of the sampling-step index at which the grad step happens."""
        return self.num_inference_steps - self.late_steps, self.num_inference_steps - 1
