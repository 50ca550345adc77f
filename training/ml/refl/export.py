"""Diffusers-native copies of a ReFL checkpoint's deployable weights, so plain diffusers loads them.

The checkpoint's own files (``model.safetensors`` keyed by PEFT's in-model names, EMA and optimiser state)
serve resuming and :func:`~training.ml.refl.stage.apply_refl_checkpoint`; users of the fine-tuned model
should need nothing of this project:

- LoRA runs add ``pytorch_lora_weights.safetensors`` (diffusers' LoRA format, with the adapter's rank and
  alpha as metadata): ``pipe = StableDiffusion[XL]Pipeline.from_pretrained(base); pipe.load_lora_weights(ckpt)``.
- Full runs add ``unet/`` (config + weights): ``UNet2DConditionModel.from_pretrained(ckpt, subfolder="unet")``
  passed as ``unet=`` to the base pipeline's ``from_pretrained``.

The LoRA is relative to the model it was trained on: in a round's later iterations that is the base with
the earlier iterations' LoRAs fused in (load and ``fuse_lora`` them in order).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from training.ml.refl.adapters import DiffusionAdapter

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
UNET_FOLDER = "unet"


def export_for_diffusers(adapter: DiffusionAdapter, directory: str | Path, train_mode: str) -> Path | None:
    """Write the UNet weights the adapter holds now into ``directory`` in diffusers' format.

    Call it with the checkpoint's deployable weights in ``adapter.unet`` (what ``ReFLTrainer.train`` leaves
    there: the guard's choice, EMA-averaged when EMA is on). Families without a diffusers pipeline (the
    synthetic world) get nothing; returns the written file or folder.
    """
    pipe = getattr(adapter, "pipe", None)
    if pipe is None:
        return None
    directory = Path(directory)
    staging = Path(tempfile.mkdtemp(prefix=".diffusers-export.", dir=directory))
    try:
        unet = adapter.unet
        if train_mode == "lora":
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            name = LORA_WEIGHTS_NAME
            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
            type(pipe).save_lora_weights(
                staging,
                unet_lora_layers={k: v.detach().to("cpu").contiguous() for k, v in layers.items()},
                unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
                weight_name=name,
            )
        elif train_mode == "full":
            name = UNET_FOLDER
            unet.save_pretrained(staging / name)
        else:
            raise ValueError(f"unknown train mode {train_mode!r}")
        target = directory / name
        if target.is_dir():
            shutil.rmtree(target)
        # One rename: a crash leaves either no export or a whole one next to the checkpoint.
        (staging / name).replace(target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
