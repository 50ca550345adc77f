"""Set-up both fine-tuning trainers share (ReFL in ``trainer.py``, Diffusion-DPO in ``training.ml.dpo``):
placing the model on the accelerator, LoRA adapters, the frozen reference denoiser, loading trainable
weights back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from training.ml.common import CheckpointError
from training.ml.refl.adapters import DiffusionAdapter
from training.ml.refl.config import LoRASettings


def place_on_accelerator(adapter: DiffusionAdapter, accelerator, mixed_precision: str) -> torch.dtype | None:
    """Move the model to the accelerator's device, frozen parts in the mixed-precision dtype on a GPU;
    returns that dtype (None on CPU or without mixed precision)."""
    frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)
    on_gpu = accelerator.device.type != "cpu"
    adapter.to(accelerator.device, frozen_dtype if on_gpu else None)
    adapter.freeze_frozen_modules()
    return frozen_dtype if on_gpu else None


def add_lora(unet: nn.Module, lora: LoRASettings, seed: int) -> None:
    """Freeze the UNet and add LoRA adapters (B = 0: the adapted model starts exactly at the base model)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha if lora.alpha is not None else lora.rank,
        lora_dropout=lora.dropout,
        init_lora_weights=True,
        target_modules=list(lora.target_modules),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config)


@contextlib.contextmanager
def reference_denoiser(unet: nn.Module, reference: nn.Module | None) -> Iterator[nn.Module]:
    """The frozen reference: a kept copy (full fine-tuning), or the UNet with its LoRA adapters off."""
    if reference is not None:
        yield reference
        return
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


def load_trainable(named_params: Mapping[str, nn.Parameter], state: Mapping[str, torch.Tensor]) -> None:
    """Copy saved trainable weights into the parameters; names and shapes must match exactly."""
    missing = sorted(set(named_params) - set(state))
    unexpected = sorted(set(state) - set(named_params))
    if missing or unexpected:
        raise CheckpointError(
            f"trainable weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    with torch.no_grad():
        for name, param in named_params.items():
            value = state[name]
            if value.shape != param.shape:
                raise CheckpointError(f"{name}: shape {tuple(value.shape)} vs {tuple(param.shape)}")
            param.copy_(value.to(param.device, param.dtype))
