"""The single DDIM sampler and ReFL step shared by every model family.

``sample`` (gradients off) is the plain text-to-image sampler; ``refl_forward`` runs the same loop without
gradients up to a stop step, takes that one step with gradients, and predicts x0 from it. Both call
``guided_prediction`` so the training step and inference see exactly the same denoiser arithmetic.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from training.ml.refl.adapters import Conditioning, DiffusionAdapter


def initial_noise(
    adapter: DiffusionAdapter, batch: int, height: int, width: int, generator: torch.Generator | None
) -> torch.Tensor:
    """x_T exactly as diffusers pipelines draw it (CPU generator → same noise on every device)."""
    shape = adapter.latent_shape(batch, height, width)
    noise = randn_tensor(shape, generator=generator, device=adapter.device, dtype=adapter.dtype)
    return noise * adapter.scheduler.init_noise_sigma


def predict_x0(
    scheduler, model_output: torch.Tensor, timestep: torch.Tensor | int, sample: torch.Tensor
) -> torch.Tensor:
    """x0 from the denoiser output at ``timestep``, including the scheduler's clipping/thresholding.

    Written out (rather than read from ``scheduler.step``) so it works for any scheduler with
    ``alphas_cumprod`` and needs no scheduler state; tests pin it to DDIM's ``pred_original_sample``.
    """
    t = int(timestep)
    alpha_prod = scheduler.alphas_cumprod[t].to(device=sample.device, dtype=sample.dtype)
    beta_prod = 1 - alpha_prod
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        x0 = (sample - beta_prod ** (0.5) * model_output) / alpha_prod ** (0.5)
    elif kind == "sample":
        x0 = model_output
    elif kind == "v_prediction":
        x0 = (alpha_prod**0.5) * sample - (beta_prod**0.5) * model_output
    else:
        raise ValueError(f"unsupported prediction_type {kind!r}")
    if getattr(scheduler.config, "thresholding", False):
        x0 = scheduler._threshold_sample(x0)
    elif getattr(scheduler.config, "clip_sample", False):
        limit = scheduler.config.clip_sample_range
        x0 = x0.clamp(-limit, limit)
    return x0


def guided_prediction(
    adapter: DiffusionAdapter,
    unet: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Conditioning,
    guidance_scale: float,
) -> torch.Tensor:
    """Denoiser output, with classifier-free guidance when ``guidance_scale > 1``."""
    if guidance_scale > 1.0:
        x_in = adapter.scheduler.scale_model_input(torch.cat([x, x]), t)
        out = adapter.denoise(unet, x_in, t, cond.guided_batch(adapter.uncond_first))
        uncond, text = out.chunk(2) if adapter.uncond_first else out.chunk(2)[::-1]
        return uncond + guidance_scale * (text - uncond)
    return adapter.denoise(unet, adapter.scheduler.scale_model_input(x, t), t, cond.cond)


def set_timesteps(adapter: DiffusionAdapter, num_inference_steps: int) -> torch.Tensor:
    adapter.scheduler.set_timesteps(num_inference_steps, device=adapter.device)
    return adapter.scheduler.timesteps


def _check_guidance(cond: Conditioning, guidance_scale: float) -> None:
    if guidance_scale > 1.0 and cond.uncond is None:
        raise ValueError("guidance_scale > 1 needs conditioning encoded with guided=True")


def denoise_loop(
    adapter: DiffusionAdapter,
    cond: Conditioning,
    latents: torch.Tensor,
    *,
    num_inference_steps: int,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    unet: nn.Module | None = None,
    stop_index: int | None = None,
) -> torch.Tensor:
    """Run DDIM steps ``0 .. stop_index-1`` (all steps when None) without gradients; return the latents."""
    _check_guidance(cond, guidance_scale)
    unet = adapter.unet if unet is None else unet
    timesteps = set_timesteps(adapter, num_inference_steps)
    end = len(timesteps) if stop_index is None else stop_index
    if not 0 <= end <= len(timesteps):
        raise ValueError(f"stop_index {stop_index} outside [0, {len(timesteps)}]")
    with torch.no_grad():
        for t in timesteps[:end]:
            out = guided_prediction(adapter, unet, latents, t, cond, guidance_scale)
            latents = adapter.scheduler.step(
                out, t, latents, eta=eta, generator=generator, return_dict=False
            )[0]
    return latents


@torch.no_grad()
def sample(
    adapter: DiffusionAdapter,
    prompts: Sequence[str],
    *,
    num_inference_steps: int = 40,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    height: int | None = None,
    width: int | None = None,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    unet: nn.Module | None = None,
) -> torch.Tensor:
    """Text → images in [0, 1], ``[B, 3, H, W]``; same arithmetic and RNG use as the diffusers pipeline."""
    height, width = _size(adapter, height, width)
    guided = guidance_scale > 1.0
    cond = adapter.encode_prompts(prompts, guided=guided, height=height, width=width)
    if latents is None:
        latents = initial_noise(adapter, len(prompts), height, width, generator)
    final = denoise_loop(
        adapter,
        cond,
        latents,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        eta=eta,
        generator=generator,
        unet=unet,
    )
    return adapter.decode(final)


@dataclasses.dataclass
class ReFLForward:
    """What one ReFL forward pass produced (``prediction`` and ``x0``/``images`` carry gradients)."""

    stop_index: int
    timestep: torch.Tensor
    x_t: torch.Tensor  # the (gradient-free) sample the grad step starts from
    prediction: torch.Tensor  # guided denoiser output at the stop step
    x0: torch.Tensor  # predicted clean latents
    images: torch.Tensor  # decoded x0 in [0, 1]


def refl_forward(
    adapter: DiffusionAdapter,
    cond: Conditioning,
    latents: torch.Tensor,
    *,
    num_inference_steps: int,
    stop_index: int,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    unet: nn.Module | None = None,
) -> ReFLForward:
    """No-grad sampling to ``stop_index``, one denoiser call with gradients, x0 prediction, decode."""
    unet = adapter.unet if unet is None else unet
    x_t = denoise_loop(
        adapter,
        cond,
        latents,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        eta=eta,
        generator=generator,
        unet=unet,
        stop_index=stop_index,
    )
    if stop_index >= num_inference_steps:
        raise ValueError(f"stop_index {stop_index} must be < num_inference_steps {num_inference_steps}")
    t = adapter.scheduler.timesteps[stop_index]
    with torch.enable_grad():
        prediction = guided_prediction(adapter, unet, x_t, t, cond, guidance_scale)
        x0 = predict_x0(adapter.scheduler, prediction, t, x_t)
        images = adapter.decode(x0)
    return ReFLForward(stop_index, t, x_t, prediction, x0, images)


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Temporarily switch a module to eval (dropout off) and restore its previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _size(adapter: DiffusionAdapter, height: int | None, width: int | None) -> tuple[int, int]:
    default_h, default_w = adapter.default_size
    return height or default_h, width or default_w
