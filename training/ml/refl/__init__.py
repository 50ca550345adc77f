"""Multi-reward ReFL (reward feedback learning) for text-to-image diffusion models; imports no Django.

One sampler / ReFL step (:mod:`.sampler`) serves every model family through a small adapter
(:mod:`.adapters`: SD1.x, SDXL; the synthetic world's base model in :mod:`.world_adapter`).
"""

from __future__ import annotations

from training.ml.refl.adapters import (
    Conditioning,
    DiffusionAdapter,
    SD15Adapter,
    SDXLAdapter,
    load_sd15_adapter,
    load_sdxl_adapter,
)
from training.ml.refl.best_of_n import BestOfN, best_of_n
from training.ml.refl.config import GuardConfig, LoRASettings, ReFLConfig
from training.ml.refl.guard import GuardDecision, GuardEvaluation, HackingGuard
from training.ml.refl.losses import kl_penalty, phi, weighted_reward, weighted_reward_loss
from training.ml.refl.optim import OptimizerUnavailable, build_optimizer
from training.ml.refl.sampler import ReFLForward, initial_noise, predict_x0, refl_forward, sample
from training.ml.refl.trainer import ReFLRunSummary, ReFLTrainer, RewardSpec

__all__ = [
    "BestOfN",
    "Conditioning",
    "DiffusionAdapter",
    "GuardConfig",
    "GuardDecision",
    "GuardEvaluation",
    "HackingGuard",
    "LoRASettings",
    "OptimizerUnavailable",
    "ReFLConfig",
    "ReFLForward",
    "ReFLRunSummary",
    "ReFLTrainer",
    "RewardSpec",
    "SD15Adapter",
    "SDXLAdapter",
    "best_of_n",
    "build_optimizer",
    "initial_noise",
    "kl_penalty",
    "load_sd15_adapter",
    "load_sdxl_adapter",
    "phi",
    "predict_x0",
    "refl_forward",
    "sample",
    "weighted_reward",
    "weighted_reward_loss",
]
