"""Optimiser construction (AdamW; 8-bit AdamW / Adafactor only when importable) and pickle-free state I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from training.ml.refl.config import ReFLConfig


class OptimizerUnavailable(RuntimeError):
    """The configured optimiser needs a package that is not installed."""


def build_optimizer(params: Iterable[torch.nn.Parameter], config: ReFLConfig) -> torch.optim.Optimizer:
    params = list(params)
    if not params:
        raise ValueError("no trainable parameters")
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            params,
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise OptimizerUnavailable(
                "optimizer='adamw_8bit' needs bitsandbytes, which is not installed; use 'adamw'"
            ) from exc
        return bnb.optim.AdamW8bit(
            params,
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adafactor":
        try:
            from transformers.optimization import Adafactor
        except ImportError as exc:  # pragma: no cover - transformers is a hard dependency here
            raise OptimizerUnavailable("optimizer='adafactor' needs transformers") from exc
        # A fixed external learning rate, so the warm-up/lr settings mean the same as for AdamW.
        return Adafactor(
            params,
            lr=config.learning_rate,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
            weight_decay=config.weight_decay,
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def set_learning_rate(optimizer: torch.optim.Optimizer, config: ReFLConfig, step: int) -> float:
    """Linear warm-up then constant; a pure function of the step so resuming needs no scheduler state."""
    lr = config.learning_rate
    if config.lr_warmup_steps:
        lr *= min(1.0, (step + 1) / config.lr_warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def optimizer_state_to_tensors(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors-ready tensors and a JSON-ready remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"scalars": scalars, "param_groups": list(state["param_groups"])}


def optimizer_state_from_tensors(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}
