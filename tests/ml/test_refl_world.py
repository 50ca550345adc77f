"""The world model's adapter: same sampler, same ReFL step, oracle as the held-out evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.ml.refl.config import GuardConfig, LoRASettings, ReFLConfig
from training.ml.refl.sampler import initial_noise, refl_forward, sample
from training.ml.refl.trainer import ReFLTrainer
from training.ml.refl.world_adapter import WorldAdapter, oracle_evaluator
from training.ml.world.model import WorldDiffusionModel, WorldModelConfig

PROMPTS = ["a blue square and a yellow triangle", "a purple circle to the right of a red diamond"]
SMALL = WorldModelConfig(block_out_channels=(16, 32), norm_num_groups=8, text_dim=32, text_ff=64)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def world(seed: int = 0) -> WorldDiffusionModel:
    torch.manual_seed(seed)
    return WorldDiffusionModel(SMALL).eval()


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_sampler_reproduces_the_world_models_own_sampler(guidance):
    model = world()
    adapter = WorldAdapter(model)
    seeds = [4, 9]
    expected = model.sample(PROMPTS, seeds, steps=6, guidance=guidance)
    ours = sample(
        adapter, PROMPTS, num_inference_steps=6, guidance_scale=guidance, latents=model.initial_noise(seeds)
    )
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    other = sample(
        adapter, PROMPTS, num_inference_steps=6, guidance_scale=guidance, latents=model.initial_noise([5, 6])
    )
    assert (other - ours).abs().max() > 1e-3


def test_world_refl_step_predicts_x0_like_ddim_in_pixel_space():
    adapter = WorldAdapter(world())
    adapter.unet.requires_grad_(True)
    cond = adapter.encode_prompts(PROMPTS, guided=True, height=32, width=32)
    x_T = initial_noise(adapter, 2, 32, 32, torch.Generator().manual_seed(0))
    out = refl_forward(adapter, cond, x_T, num_inference_steps=8, stop_index=6, guidance_scale=3.0)
    expected = adapter.scheduler.step(out.prediction.detach(), out.timestep, out.x_t).pred_original_sample
    torch.testing.assert_close(out.x0.detach(), expected, rtol=0, atol=0)
    torch.testing.assert_close(out.images.detach(), ((expected + 1) / 2).clamp(0, 1))
    assert out.images.requires_grad


def test_world_lora_trains_while_the_text_encoder_stays_frozen():
    model = world()
    text_before = {n: p.detach().clone() for n, p in model.text_encoder.named_parameters()}
    cfg = ReFLConfig(
        num_inference_steps=5,
        late_steps=2,
        max_steps=2,
        learning_rate=1e-2,
        reward_scale=1.0,
        guidance_scale=2.0,
        lora=LoRASettings(rank=2),
        guard=GuardConfig(every=0),
    )
    trainer = ReFLTrainer(WorldAdapter(model), cfg, {"red": lambda p, im: im[:, 0].mean((1, 2))}, PROMPTS)
    lora_before = {n: p.detach().clone() for n, p in trainer.named_params.items()}
    trainer.train()
    assert all(torch.equal(text_before[n], p) for n, p in model.text_encoder.named_parameters())
    assert all(not p.requires_grad and p.grad is None for p in model.text_encoder.parameters())
    assert any(not torch.equal(lora_before[n], p) for n, p in trainer.named_params.items())


def test_oracle_evaluator_scores_each_image_against_its_prompt():
    from training.ml.world.layout import render_prompt

    arrays = [np.array(render_prompt(p, seed=0), dtype=np.float32) / 255 for p in PROMPTS]
    images = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])
    correct = oracle_evaluator(PROMPTS, images)
    swapped = oracle_evaluator(PROMPTS[::-1], images)
    assert correct.shape == (2,) and (correct == 1.0).all()
    assert (swapped < 1.0).all()
