"""One small adapter per model family over the single sampler / ReFL step in :mod:`.sampler`.

An adapter knows how its family turns prompts into denoiser conditioning, calls the denoiser, and maps
between latents and ``[0, 1]`` images. Everything else (the DDIM loop, the grad step, x0 prediction, the
losses) is family-agnostic, so SD1.x, SDXL and the synthetic world model share one code path.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

Cond = dict[str, torch.Tensor]


@dataclasses.dataclass
class Conditioning:
    """Denoiser conditioning for a batch; ``uncond`` is present only when guidance will be applied."""

    cond: Cond
    uncond: Cond | None = None

    @property
    def batch_size(self) -> int:
        return next(iter(self.cond.values())).shape[0]

    def guided_batch(self, uncond_first: bool = True) -> Cond:
        """``[uncond; cond]`` (diffusers pipelines' order) or ``[cond; uncond]`` stacked along the batch."""
        if self.uncond is None:
            raise ValueError("no unconditional embedding: encode with guided=True")
        first, second = (self.uncond, self.cond) if uncond_first else (self.cond, self.uncond)
        return {k: torch.cat([first[k], second[k]]) for k in self.cond}


class DiffusionAdapter(abc.ABC):
    """What the family-agnostic sampler and trainer need from a text-to-image diffusion model."""

    family: ClassVar[str]
    # Batch order of the guided denoiser call; the result is the same, but matching the family's own
    # sampler keeps our images bit-identical to it.
    uncond_first: ClassVar[bool] = True
    unet: nn.Module
    scheduler: Any  # a diffusers scheduler with alphas_cumprod (DDIM by default)

    @abc.abstractmethod
    def frozen_modules(self) -> dict[str, nn.Module]:
        """Modules that must never train (VAE, text encoders)."""

    @abc.abstractmethod
    def encode_prompts(
        self, prompts: Sequence[str], *, guided: bool, height: int, width: int
    ) -> Conditioning:
        """Frozen text conditioning; never carries gradients."""

    @abc.abstractmethod
    def denoise(self, unet: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The denoiser's raw output (ε, v or x0 depending on the scheduler's prediction type)."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images in [0, 1]; differentiable w.r.t. the latents."""

    @abc.abstractmethod
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] → clean latents (for the pretraining denoising loss)."""

    @abc.abstractmethod
    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]: ...

    @property
    @abc.abstractmethod
    def default_size(self) -> tuple[int, int]: ...

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-ready description written into checkpoints (family, where the base weights came from)."""

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def freeze_frozen_modules(self) -> None:
        for module in self.frozen_modules().values():
            module.requires_grad_(False)
            module.eval()

    def to(self, device: torch.device | str, frozen_dtype: torch.dtype | None = None) -> DiffusionAdapter:
        """Move everything; frozen modules may live in a lower precision (the trainable UNet stays as is)."""
        self.unet.to(device)
        for module in self.frozen_modules().values():
            module.to(device=device, dtype=frozen_dtype) if frozen_dtype else module.to(device)
        return self


def _image_to_unit(decoded: torch.Tensor) -> torch.Tensor:
    # VAE outputs live in [-1, 1]; the clamp is what diffusers' postprocess does to every image.
    return (decoded / 2 + 0.5).clamp(0, 1)


class _VAEPipelineAdapter(DiffusionAdapter):
    """Shared latent-space plumbing of the Stable Diffusion families (VAE decode/encode, sizes)."""

    def __init__(self, pipe: Any, source: str | None = None) -> None:
        from diffusers import DDIMScheduler

        self.pipe = pipe
        self.source = source
        self.unet = pipe.unet
        self.vae = pipe.vae
        if not isinstance(pipe.scheduler, DDIMScheduler):
            # ReFL's grad step needs a deterministic, x0-predicting sampler; DDIM with the model's betas.
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.scheduler = pipe.scheduler
        pipe.set_progress_bar_config(disable=True)
        self.freeze_frozen_modules()

    def to(self, device: torch.device | str, frozen_dtype: torch.dtype | None = None) -> DiffusionAdapter:
        super().to(device, frozen_dtype)
        if frozen_dtype is not None and getattr(self.vae.config, "force_upcast", False):
            # VAEs flagged force_upcast (SDXL's) overflow in fp16; diffusers decodes them in float32 too.
            self.vae.to(dtype=torch.float32)
        return self

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> tuple[int, int]:
        size = self.unet.config.sample_size * self.vae_scale_factor
        return size, size

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        f = self.vae_scale_factor
        return batch, self.unet.config.in_channels, height // f, width // f

    def _unscale(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        mean = getattr(cfg, "latents_mean", None)
        std = getattr(cfg, "latents_std", None)
        if mean is not None and std is not None:
            mean_t = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            std_t = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            return latents * std_t / cfg.scaling_factor + mean_t
        return latents / cfg.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae_dtype = next(self.vae.parameters()).dtype
        decoded = self.vae.decode(self._unscale(latents).to(vae_dtype), return_dict=False)[0]
        return _image_to_unit(decoded.float())

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        vae_dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode((images * 2 - 1).to(vae_dtype)).latent_dist
        latents = dist.sample(generator).float()
        cfg = self.vae.config
        mean = getattr(cfg, "latents_mean", None)
        std = getattr(cfg, "latents_std", None)
        if mean is not None and std is not None:
            mean_t = torch.tensor(mean, device=latents.device).view(1, -1, 1, 1)
            std_t = torch.tensor(std, device=latents.device).view(1, -1, 1, 1)
            return (latents - mean_t) * cfg.scaling_factor / std_t
        return latents * cfg.scaling_factor

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "source": self.source,
            "unet_config": _jsonable(dict(self.unet.config)),
            "scheduler_config": _jsonable(dict(self.scheduler.config)),
        }


class SD15Adapter(_VAEPipelineAdapter):
    """Stable Diffusion 1.x: one CLIP text encoder, cross-attention on its last hidden state."""

    family = "sd15"

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"vae": self.vae, "text_encoder": self.pipe.text_encoder}

    @torch.no_grad()
    def encode_prompts(
        self, prompts: Sequence[str], *, guided: bool, height: int, width: int
    ) -> Conditioning:
        # The pipeline's own encode_prompt keeps tokenisation, clip-skip and attention-mask handling identical.
        cond, uncond = self.pipe.encode_prompt(list(prompts), self.device, 1, guided)
        return Conditioning(
            {"encoder_hidden_states": cond.to(self.dtype)},
            {"encoder_hidden_states": uncond.to(self.dtype)} if guided else None,
        )

    def denoise(self, unet: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        return unet(x, t, encoder_hidden_states=cond["encoder_hidden_states"], return_dict=False)[0]


class SDXLAdapter(_VAEPipelineAdapter):
    """SDXL: two text encoders (concatenated hidden states + pooled projection) and added time ids."""

    family = "sdxl"

    def frozen_modules(self) -> dict[str, nn.Module]:
        modules = {"vae": self.vae}
        if self.pipe.text_encoder is not None:
            modules["text_encoder"] = self.pipe.text_encoder
        modules["text_encoder_2"] = self.pipe.text_encoder_2
        return modules

    @torch.no_grad()
    def encode_prompts(
        self, prompts: Sequence[str], *, guided: bool, height: int, width: int
    ) -> Conditioning:
        embeds, neg_embeds, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=list(prompts),
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=guided,
        )
        projection_dim = (
            int(pooled.shape[-1])
            if self.pipe.text_encoder_2 is None
            else self.pipe.text_encoder_2.config.projection_dim
        )
        # No crop, generated at the target size: what the pipeline does by default.
        time_ids = self.pipe._get_add_time_ids(
            (height, width),
            (0, 0),
            (height, width),
            dtype=self.dtype,
            text_encoder_projection_dim=projection_dim,
        ).to(self.device)
        time_ids = time_ids.repeat(len(prompts), 1)
        cond = {"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": time_ids}
        uncond = {"encoder_hidden_states": neg_embeds, "text_embeds": neg_pooled, "time_ids": time_ids}
        to = lambda d: {k: v.to(self.dtype) for k, v in d.items()}  # noqa: E731
        return Conditioning(to(cond), to(uncond) if guided else None)

    def denoise(self, unet: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        return unet(
            x,
            t,
            encoder_hidden_states=cond["encoder_hidden_states"],
            added_cond_kwargs={"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]},
            return_dict=False,
        )[0]


def load_sd15_adapter(path: str | os.PathLike[str], torch_dtype: torch.dtype = torch.float32) -> SD15Adapter:
    """A local diffusers SD1.x folder (no hub access); the safety checker is not loaded."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(path),
        safety_checker=None,
        requires_safety_checker=False,
        dtype=torch_dtype,
        local_files_only=True,
    )
    return SD15Adapter(pipe, source=str(Path(path).resolve()))


def load_sdxl_adapter(path: str | os.PathLike[str], torch_dtype: torch.dtype = torch.float32) -> SDXLAdapter:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(
        str(path), dtype=torch_dtype, local_files_only=True, add_watermarker=False
    )
    return SDXLAdapter(pipe, source=str(Path(path).resolve()))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
