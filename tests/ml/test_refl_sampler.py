"""The shared sampler / ReFL forward pass against diffusers' own pipelines and scheduler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from transformers import CLIPTokenizer

from training.ml.refl.adapters import SD15Adapter, SDXLAdapter
from training.ml.refl.best_of_n import best_of_n
from training.ml.refl.sampler import initial_noise, predict_x0, refl_forward, sample
from training.ml.refl.tiny import tiny_sd15_pipeline, tiny_sdxl_pipeline

TOKENIZER = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizers" / "clip"
PROMPTS = ["a red cube left of a blue ball", "two green cats"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_clip_fixture_tokenises_like_real_clip():
    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    assert tok.model_max_length == 77
    # Real CLIP ids for these words (merge ids are kept; only the special tokens move down).
    ids = tok("a photo of a cat").input_ids
    assert ids[1:-1] == [320, 1125, 539, 320, 2368]
    assert ids[0] == tok.bos_token_id == len(tok) - 2
    assert ids[-1] == tok.eos_token_id == len(tok) - 1
    padded = tok("x", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(padded) == 77


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip_sample", [False, True])
def test_x0_prediction_equals_ddim_pred_original_sample(prediction_type, clip_sample):
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
        clip_sample=clip_sample,
        set_alpha_to_one=False,
    )
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    sample_ = torch.randn(2, 4, 8, 8, generator=g) * 2
    output = torch.randn(2, 4, 8, 8, generator=g)
    for t in scheduler.timesteps[[0, 5, 9]]:
        expected = scheduler.step(output, t, sample_).pred_original_sample
        torch.testing.assert_close(predict_x0(scheduler, output, t, sample_), expected, rtol=0, atol=0)


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_sampler_reproduces_sd15_pipeline_image(guidance_scale):
    pipe = tiny_sd15_pipeline(TOKENIZER)
    adapter = SD15Adapter(pipe)
    expected = pipe(
        PROMPTS,
        num_inference_steps=6,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(7),
        output_type="pt",
    ).images
    ours = sample(
        adapter,
        PROMPTS,
        num_inference_steps=6,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(7),
    )
    assert ours.shape == expected.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    # Not a degenerate comparison: another seed gives a different image.
    other = sample(
        adapter,
        PROMPTS,
        num_inference_steps=6,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(8),
    )
    assert (other - ours).abs().max() > 1e-3


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_sampler_reproduces_sdxl_pipeline_image(guidance_scale):
    pipe = tiny_sdxl_pipeline(TOKENIZER)
    adapter = SDXLAdapter(pipe)
    expected = pipe(
        PROMPTS,
        num_inference_steps=5,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).images
    ours = sample(
        adapter,
        PROMPTS,
        num_inference_steps=5,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(3),
    )
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_sdxl_conditioning_carries_two_encoders_and_time_ids():
    adapter = SDXLAdapter(tiny_sdxl_pipeline(TOKENIZER))
    cond = adapter.encode_prompts(PROMPTS, guided=True, height=32, width=32)
    assert cond.cond["encoder_hidden_states"].shape == (2, 77, 64)  # 32 + 32 concatenated
    assert cond.cond["text_embeds"].shape == (2, 32)
    assert cond.cond["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    assert cond.guided_batch()["encoder_hidden_states"].shape[0] == 4


def _count_grad_calls(unet):
    calls = []
    handle = unet.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    return calls, handle


@pytest.mark.parametrize(
    "adapter_cls,build", [(SD15Adapter, tiny_sd15_pipeline), (SDXLAdapter, tiny_sdxl_pipeline)]
)
def test_refl_forward_runs_one_grad_step_at_the_stop_step(adapter_cls, build):
    adapter = adapter_cls(build(TOKENIZER))
    adapter.unet.requires_grad_(True)
    cond = adapter.encode_prompts(PROMPTS, guided=False, height=32, width=32)
    latents = initial_noise(adapter, 2, 32, 32, torch.Generator().manual_seed(0))
    calls, handle = _count_grad_calls(adapter.unet)
    out = refl_forward(adapter, cond, latents, num_inference_steps=8, stop_index=5)
    handle.remove()
    assert calls == [False] * 5 + [True]
    assert not out.x_t.requires_grad and out.images.requires_grad
    assert out.images.shape == (2, 3, 32, 32) and out.images.min() >= 0 and out.images.max() <= 1
    assert int(out.timestep) == int(adapter.scheduler.timesteps[5])
    expected_x0 = adapter.scheduler.step(out.prediction.detach(), out.timestep, out.x_t).pred_original_sample
    torch.testing.assert_close(out.x0.detach(), expected_x0, rtol=0, atol=0)
    out.images.mean().backward()
    assert adapter.unet.conv_in.weight.grad is not None
    assert all(p.grad is None for p in adapter.vae.parameters())


def test_refl_forward_without_gradients_matches_full_sampler_trajectory():
    adapter = SD15Adapter(tiny_sd15_pipeline(TOKENIZER))
    cond = adapter.encode_prompts(PROMPTS, guided=True, height=32, width=32)
    latents = initial_noise(adapter, 2, 32, 32, torch.Generator().manual_seed(1))
    # Stopping at the last step and stepping the scheduler once more is the plain sampler's final latent.
    out = refl_forward(adapter, cond, latents, num_inference_steps=6, stop_index=5, guidance_scale=3.0)
    final = adapter.scheduler.step(out.prediction.detach(), out.timestep, out.x_t).prev_sample
    images = sample(adapter, PROMPTS, num_inference_steps=6, guidance_scale=3.0, latents=latents)
    torch.testing.assert_close(adapter.decode(final), images, rtol=0, atol=1e-6)


def test_best_of_n_keeps_the_highest_scoring_candidate_per_prompt():
    adapter = SD15Adapter(tiny_sd15_pipeline(TOKENIZER))
    redness = lambda prompts, images: images[:, 0].mean((1, 2))  # noqa: E731
    result = best_of_n(
        adapter,
        PROMPTS,
        3,
        {"red": redness},
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        batch_size=4,
    )
    assert result.scores.shape == (2, 3) and result.images.shape == (2, 3, 32, 32)
    assert torch.equal(result.chosen, result.scores.argmax(1))
    torch.testing.assert_close(redness(PROMPTS, result.images), result.scores.max(1).values)
    # Candidates are the plain sampler's images for the same noise stream.
    plain = sample(
        adapter,
        [p for p in PROMPTS for _ in range(3)][:4],
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(redness(PROMPTS, plain)[:3], result.scores[0], rtol=0, atol=1e-6)
