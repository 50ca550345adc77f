"""Exponential moving average of the trainable parameters (LoRA factors or the full UNet)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn


class ParameterEMA:
    """Shadow copy ``s ← d·s + (1−d)·p`` kept in float32 on the parameters' device."""

    def __init__(self, params: Mapping[str, nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in params.items()}

    @torch.no_grad()
    def update(self, params: Mapping[str, nn.Parameter]) -> None:
        self._check(params)
        for name, p in params.items():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, params: Mapping[str, nn.Parameter]) -> None:
        self._check(params)
        for name, p in params.items():
            p.copy_(self.shadow[name].to(p.dtype))

    @contextlib.contextmanager
    def swapped_in(self, params: Mapping[str, nn.Parameter]) -> Iterator[None]:
        """Evaluate with EMA weights, then put the raw training weights back."""
        backup = {name: p.detach().clone() for name, p in params.items()}
        self.copy_to(params)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(backup[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(state))[:3]
            unexpected = sorted(set(state) - set(self.shadow))[:3]
            raise ValueError(
                f"EMA state does not match the parameters (missing {missing}, unexpected {unexpected})"
            )
        for name, value in state.items():
            self.shadow[name] = value.detach().float().clone().to(self.shadow[name].device)

    def _check(self, params: Mapping[str, nn.Parameter]) -> None:
        if set(params) != set(self.shadow):
            raise ValueError("EMA was built for a different set of parameters")
