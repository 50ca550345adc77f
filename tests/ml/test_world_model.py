"""The world's base diffusion model: configuration, tokenizer, persistence, sampling and training."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from training.ml.world.model import WorldDiffusionModel, WorldModelConfig
from training.ml.world.pretrain import PretrainConfig, draw_batch, pretrain, training_prompts

TINY = WorldModelConfig(block_out_channels=(16, 32), text_dim=32, text_ff=64, text_layers=1)
PROMPTS = ["a red circle and a blue square", "a striped triangle to the left of a green diamond"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0) -> WorldDiffusionModel:
    torch.manual_seed(seed)
    return WorldDiffusionModel(TINY).eval()


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError):
        WorldModelConfig(block_out_channels=(30, 64))  # not divisible by the group norm's 8 groups
    with pytest.raises(ValueError):
        WorldModelConfig(prediction_type="flow")
    with pytest.raises(ValueError):
        WorldModelConfig(image_size=30, block_out_channels=(32, 64, 64))
    with pytest.raises(ValueError):
        WorldModelConfig.from_dict({**TINY.to_dict(), "dropout": 0.1})
    assert WorldModelConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY


def test_encode_prompts_gives_one_hidden_state_per_token():
    model = tiny_model()
    hidden = model.encode_prompts(PROMPTS + [""])
    assert hidden.shape == (3, TINY.max_length, TINY.text_dim)
    assert not torch.allclose(hidden[0], hidden[1])


def test_sample_is_an_image_batch_fixed_by_the_seeds():
    model = tiny_model()
    images = model.sample(PROMPTS, [1, 2], steps=4, guidance=3.0)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, model.sample(PROMPTS, [1, 2], steps=4, guidance=3.0))
    assert not torch.equal(images, model.sample(PROMPTS, [1, 3], steps=4, guidance=3.0))
    assert not torch.equal(images, model.sample(PROMPTS, [1, 2], steps=4, guidance=1.0))


def test_save_then_load_gives_the_identical_sample(tmp_path):
    model = tiny_model(seed=5)
    before = model.sample(PROMPTS, [7, 8], steps=5, guidance=2.0)
    model.save_pretrained(tmp_path / "ckpt", train_info={"note": "test"})
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert files == {
        "model.safetensors",
        "config.json",
        "vocab.json",
        "scheduler_config.json",
        "train_info.json",
    }
    loaded = WorldDiffusionModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == TINY
    assert torch.equal(before, loaded.sample(PROMPTS, [7, 8], steps=5, guidance=2.0))


def fixed_batch_loss(model: WorldDiffusionModel) -> float:
    """Loss on one fixed batch with fixed noise and timesteps, comparable across models."""
    rng = __import__("numpy").random.default_rng(123)
    images, captions = draw_batch(rng, 16, training_prompts(), uncond_prob=0.0)
    with torch.no_grad():
        return float(model.training_loss(images, captions, generator=torch.Generator().manual_seed(0)))


def test_a_tiny_config_trains_a_few_steps_and_the_loss_falls():
    config = PretrainConfig(steps=30, batch_size=8, warmup_steps=5, ema_decay=0.9, seed=3, model=TINY)
    torch.manual_seed(config.seed)
    initial = WorldDiffusionModel(TINY)  # the same initial weights pretrain() starts from
    trained, record = pretrain(config, log=None)
    assert fixed_batch_loss(trained) < 0.7 * fixed_batch_loss(initial)
    assert record["loss_curve"][-1] < record["loss_curve"][0]
    assert not torch.are_deterministic_algorithms_enabled()  # pretrain() restores the global mode


def test_pretraining_is_reproducible_from_the_seed():
    config = PretrainConfig(steps=4, batch_size=4, seed=9, model=TINY)
    first, _ = pretrain(config, log=None)
    second, _ = pretrain(config, log=None)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_continued_pretraining_starts_from_the_saved_model_and_records_the_steps_before(tmp_path):
    first = PretrainConfig(steps=30, batch_size=8, warmup_steps=5, ema_decay=0.9, seed=3, model=TINY)
    saved, _ = pretrain(first, out=tmp_path / "first", log=None)
    more = PretrainConfig(
        steps=4, batch_size=8, learning_rate=1e-4, seed=4, model=TINY, init=str(tmp_path / "first")
    )
    continued, record = pretrain(more, out=tmp_path / "more", log=None)
    fresh, _ = pretrain(dataclasses.replace(more, init=None), log=None)
    # A few small steps from the saved weights stay near them; the same steps from scratch do not.
    assert fixed_batch_loss(continued) < 0.8 * fixed_batch_loss(fresh)
    assert fixed_batch_loss(continued) < 1.2 * fixed_batch_loss(saved)
    assert record["steps_before"] == 30
    info = json.loads((tmp_path / "more" / "train_info.json").read_text())
    assert info["config"]["init"] == str(tmp_path / "first") and info["steps_before"] == 30
    _, again = pretrain(dataclasses.replace(more, init=str(tmp_path / "more"), steps=2), log=None)
    assert again["steps_before"] == 34  # a chain of continuations adds up
    # Every stage's record travels with the model: the first run's loss curve is inside the third's record.
    assert (
        again["earlier"]["earlier"]["loss_curve"]
        == json.loads((tmp_path / "first" / "train_info.json").read_text())["loss_curve"]
    )
    assert again["earlier"]["earlier"]["earlier"] is None
    other = dataclasses.replace(TINY, text_dim=16)
    with pytest.raises(ValueError, match="another architecture"):
        pretrain(dataclasses.replace(more, model=other), log=None)
