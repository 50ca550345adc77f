"""ReFL trainer on tiny SD1.x / SDXL pipelines: what trains, what does not, resume, loss branches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from training.ml.common import CheckpointError, read_checkpoint_meta
from training.ml.refl.adapters import SD15Adapter, SDXLAdapter
from training.ml.refl.config import GuardConfig, LoRASettings, ReFLConfig
from training.ml.refl.optim import OptimizerUnavailable
from training.ml.refl.tiny import tiny_sd15_pipeline, tiny_sdxl_pipeline
from training.ml.refl.trainer import ReFLTrainer, RewardSpec

TOKENIZER = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizers" / "clip"
PROMPTS = ["a red cube left of a blue ball", "two green cats", "a small house under a tree"]
NO_GUARD = GuardConfig(every=0)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyRewardModel(nn.Module):
    """A differentiable image scorer with its own parameters (stands in for a reward model)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 1)

    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(images).mean((2, 3))).squeeze(1)


def redness(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
    return images[:, 0].mean((1, 2))


def config(**overrides) -> ReFLConfig:
    base = dict(
        num_inference_steps=5,
        late_steps=2,
        batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        reward_scale=1.0,
        weight_decay=0.0,
        guard=NO_GUARD,
        lora=LoRASettings(rank=2),
    )
    base.update(overrides)
    return ReFLConfig(**base)


def sd15() -> SD15Adapter:
    return SD15Adapter(tiny_sd15_pipeline(TOKENIZER))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_lora_trains_while_vae_text_encoders_and_reward_model_stay_frozen(family, tmp_path):
    adapter = sd15() if family == "sd15" else SDXLAdapter(tiny_sdxl_pipeline(TOKENIZER))
    reward_model = TinyRewardModel()
    frozen = {name: snapshot(m) for name, m in adapter.frozen_modules().items()}
    reward_before = snapshot(reward_model)
    base_before = snapshot(adapter.unet)
    trainer = ReFLTrainer(adapter, config(), {"tiny": RewardSpec(reward_model.score)}, PROMPTS)
    lora_before = {n: p.detach().clone() for n, p in trainer.named_params.items()}
    assert lora_before and all("lora" in n for n in lora_before)
    trainer.train()
    for name, module in adapter.frozen_modules().items():
        assert not changed(frozen[name], module), name
        assert all(not p.requires_grad and p.grad is None for p in module.parameters()), name
    assert not changed(reward_before, reward_model)
    assert all(p.grad is None for p in reward_model.parameters())
    # Base UNet weights are untouched; the LoRA B factors (zero at start) moved.
    current = {
        n.replace(".base_layer", ""): p for n, p in adapter.unet.named_parameters() if "lora_" not in n
    }
    assert set(current) == set(base_before)
    assert all(torch.equal(base_before[n], current[n]) for n in base_before)
    moved = [n for n, p in trainer.named_params.items() if not torch.equal(lora_before[n], p.detach())]
    assert any("lora_B" in n for n in moved)
    assert read_checkpoint_meta(trainer.save(tmp_path / family))["config"]["model"]["family"] == family


def test_full_mode_trains_the_unet_itself_and_nothing_else():
    adapter = sd15()
    unet_before, vae_before = snapshot(adapter.unet), snapshot(adapter.vae)
    trainer = ReFLTrainer(adapter, config(train_mode="full", learning_rate=1e-4), {"red": redness}, PROMPTS)
    assert set(trainer.named_params) == set(unet_before)
    trainer.train()
    assert len(changed(unet_before, adapter.unet)) > len(unet_before) // 2
    assert not changed(vae_before, adapter.vae)


def _run(tmp_path: Path, steps_then_resume: int | None, **overrides):
    cfg = config(max_steps=4, ema_decay=0.8, kl_weight=0.5, pretrain_loss_weight=0.3, **overrides)
    data = [
        (p, torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i))) for i, p in enumerate(PROMPTS)
    ]
    rewards = {
        "red": RewardSpec(redness, 1.0),
        "tiny": RewardSpec(TinyRewardModel().score, 0.5, image_size=24),
    }
    make = lambda: ReFLTrainer(sd15(), cfg, rewards, PROMPTS, pretrain_data=data)  # noqa: E731
    trainer = make()
    log: list[dict[str, float]] = []
    if steps_then_resume is None:
        trainer.train(lambda step, total, metrics: log.append(metrics))
        return trainer, log
    for _ in range(steps_then_resume):
        log.append(trainer.train_step())
    trainer.save(tmp_path / "ck")
    resumed = make()
    resumed.load(tmp_path / "ck")
    assert resumed.step == steps_then_resume
    resumed.train(lambda step, total, metrics: log.append(metrics))
    return resumed, log


def test_resume_continues_identically(tmp_path):
    straight, log_a = _run(tmp_path, None)
    resumed, log_b = _run(tmp_path, 2)
    assert resumed.step == straight.step == 4
    assert log_a == log_b  # every metric of every step, including losses after the resume
    for name, param in straight.named_params.items():
        assert torch.equal(param, resumed.named_params[name]), name
    for name, value in straight.ema.state_dict().items():
        assert torch.equal(value, resumed.ema.state_dict()[name]), name


def test_resume_refuses_a_checkpoint_of_a_different_run(tmp_path):
    trainer = ReFLTrainer(sd15(), config(), {"red": redness}, PROMPTS)
    trainer.train_step()
    trainer.save(tmp_path / "ck")
    other = ReFLTrainer(sd15(), config(learning_rate=5e-3), {"red": redness}, PROMPTS)
    with pytest.raises(CheckpointError, match="learning_rate"):
        other.load(tmp_path / "ck")
    longer = ReFLTrainer(sd15(), config(max_steps=10), {"red": redness}, PROMPTS)
    longer.load(tmp_path / "ck")  # a longer run may continue a shorter one
    assert longer.step == 1


def test_checkpoint_is_self_describing(tmp_path):
    trainer = ReFLTrainer(sd15(), config(ema_decay=0.9), {"red": RewardSpec(redness, 0.7)}, PROMPTS)
    metrics = trainer.train_step()
    path = trainer.save(tmp_path / "ck")
    meta = read_checkpoint_meta(path, kind="refl")
    assert meta["config"]["refl"]["learning_rate"] == 1e-2
    assert meta["config"]["rewards"] == {"red": 0.7}
    assert meta["config"]["model"]["family"] == "sd15"
    assert meta["metadata"]["step"] == 1 and meta["metadata"]["metrics"]["loss"] == metrics["loss"]
    assert meta["metadata"]["deploy_weights"] == "ema"
    assert {p.name for p in path.iterdir()} >= {
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    }


def _first_step_grads(cfg: ReFLConfig, rewards, **kwargs) -> dict[str, torch.Tensor]:
    """Gradients of the first step (captured before the optimiser consumes them)."""
    trainer = ReFLTrainer(sd15(), cfg, rewards, PROMPTS, **kwargs)
    grads: dict[str, torch.Tensor] = {}
    original = trainer.optimizer.step

    def capture(*a, **k):
        grads.update(
            {n: p.grad.detach().clone() for n, p in trainer.named_params.items() if p.grad is not None}
        )
        return original(*a, **k)

    trainer.optimizer.step = capture
    trainer.train_step()
    return grads


def _assert_grads_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], scale: float = 1.0) -> None:
    assert set(a) == set(b) and a
    for name in a:
        torch.testing.assert_close(a[name], scale * b[name], rtol=1e-4, atol=1e-7)


def test_reward_weight_scales_that_rewards_gradient_and_zero_removes_it():
    cfg = config(max_grad_norm=None)
    only_red = _first_step_grads(cfg, {"red": RewardSpec(redness, 1.0)})
    red_x3 = _first_step_grads(cfg, {"red": RewardSpec(redness, 3.0)})
    with_zero = _first_step_grads(
        cfg, {"red": RewardSpec(redness, 1.0), "tiny": RewardSpec(TinyRewardModel().score, 0.0)}
    )
    _assert_grads_close(red_x3, only_red, 3.0)
    _assert_grads_close(with_zero, only_red)
    scaled = _first_step_grads(
        config(max_grad_norm=None, reward_scale=0.25), {"red": RewardSpec(redness, 1.0)}
    )
    _assert_grads_close(scaled, only_red, 0.25)


def test_phi_branch_changes_the_training_signal():
    cfg = dict(max_grad_norm=None)
    linear = _first_step_grads(config(phi="linear", **cfg), {"red": redness})
    relu = _first_step_grads(config(phi="relu_margin", phi_margin=2.0, **cfg), {"red": redness})
    saturated = _first_step_grads(config(phi="relu_margin", phi_margin=-5.0, **cfg), {"red": redness})
    # Below the margin ReLU(m − r) has the gradient of −r; above it there is no reward gradient at all.
    _assert_grads_close(relu, linear)
    assert all(g.abs().max() == 0 for g in saturated.values())
    soft = _first_step_grads(config(phi="softplus_margin", phi_margin=0.0, **cfg), {"red": redness})
    # d softplus(m − r)/dr = −σ(m − r): with m = 0 and r ≈ 0.54 (mean red) the linear gradient times ≈ 0.37.
    name = next(n for n in linear if linear[n].abs().max() > 0)
    assert 0.3 < float((soft[name] * linear[name]).sum() / (linear[name] ** 2).sum()) < 0.45


def test_pretraining_denoising_loss_trains_even_without_reward_signal():
    data = [
        (p, torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i))) for i, p in enumerate(PROMPTS)
    ]
    cfg = config(reward_scale=0.0, pretrain_loss_weight=1.0, max_grad_norm=None)
    grads = _first_step_grads(cfg, {"red": redness}, pretrain_data=data)
    assert any(g.abs().max() > 0 for g in grads.values())
    trainer = ReFLTrainer(sd15(), cfg, {"red": redness}, PROMPTS, pretrain_data=data)
    metrics = trainer.train_step()
    assert metrics["loss"] == pytest.approx(metrics["loss_pretrain"]) and metrics["loss_pretrain"] > 0
    with pytest.raises(ValueError, match="pretrain_data"):
        ReFLTrainer(sd15(), cfg, {"red": redness}, PROMPTS)


def test_a_denoising_only_step_skips_the_sampling_pass_and_trains_on_the_same_batches():
    data = [
        (p, torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i))) for i, p in enumerate(PROMPTS)
    ]

    def refuses(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a denoising-only step must not sample and score")

    only = ReFLTrainer(
        sd15(),
        config(reward_scale=0.0, pretrain_loss_weight=1.0),
        {"r": refuses},
        PROMPTS,
        pretrain_data=data,
    )
    assert only.denoising_only
    first = only.train_step()
    assert first["loss"] == pytest.approx(first["loss_pretrain"]) and "reward" not in first
    # A step that does sample (a tiny reward weight) draws the same pretraining batch from the same noise.
    sampling = ReFLTrainer(
        sd15(),
        config(reward_scale=1e-12, pretrain_loss_weight=1.0),
        {"red": redness},
        PROMPTS,
        pretrain_data=data,
    )
    assert not sampling.denoising_only
    assert sampling.train_step()["loss_pretrain"] == pytest.approx(first["loss_pretrain"], rel=1e-6)


def test_caption_dropout_trains_the_unconditional_branch_on_the_same_batch():
    data = [
        (p, torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i))) for i, p in enumerate(PROMPTS)
    ]
    seen: list[list[str]] = []

    def loss(dropout: float, dataset) -> float:
        cfg = config(reward_scale=0.0, pretrain_loss_weight=1.0, caption_dropout=dropout)
        trainer = ReFLTrainer(sd15(), cfg, {"red": redness}, PROMPTS, pretrain_data=dataset)
        encode = trainer.adapter.encode_prompts

        def spy(prompts, **kwargs):
            seen.append(list(prompts))
            return encode(prompts, **kwargs)

        trainer.adapter.encode_prompts = spy
        return trainer.train_step()["loss_pretrain"]

    plain = loss(0.0, data)
    assert all(seen[-1]) and set(seen[-1]) <= set(PROMPTS)
    # Nearly every caption dropped: the same images, noise and steps as the empty prompt with no dropout.
    dropped = loss(0.999999, data)
    assert seen[-1] == [""] * 2
    assert dropped == pytest.approx(loss(0.0, [("", image) for _, image in data]), rel=1e-6)
    assert dropped != pytest.approx(plain, rel=1e-6)
    with pytest.raises(ValueError, match="caption_dropout"):
        config(caption_dropout=1.0)


def test_a_noise_floor_draws_the_denoising_timesteps_from_the_noisy_end_only():
    data = [
        (p, torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i))) for i, p in enumerate(PROMPTS)
    ]
    drawn: list[list[int]] = []

    def steps(floor: float) -> list[int]:
        cfg = config(reward_scale=0.0, pretrain_loss_weight=1.0, pretrain_noise_floor=floor, seed=5)
        trainer = ReFLTrainer(sd15(), cfg, {"red": redness}, PROMPTS, pretrain_data=data)
        denoise = trainer.adapter.denoise

        def spy(unet, x, t, cond):
            drawn.append([int(v) for v in t])
            return denoise(unet, x, t, cond)

        trainer.adapter.denoise = spy
        for _ in range(20):
            trainer.train_step()
        return [t for batch in drawn[-20:] for t in batch]

    num_train = sd15().scheduler.config.num_train_timesteps
    anywhere = steps(0.0)
    assert min(anywhere) < num_train // 2 <= max(anywhere)  # 40 uniform draws: both halves (p > 1 - 1e-11)
    noisy = steps(0.5)
    assert min(noisy) >= num_train // 2 and max(noisy) < num_train
    assert steps(0.999)[:4] == [num_train - 1] * 4  # the floor never empties the range
    with pytest.raises(ValueError, match="pretrain_noise_floor"):
        config(pretrain_noise_floor=1.0)


def test_kl_penalty_is_zero_at_the_reference_and_pulls_lora_back_towards_it():
    trainer = ReFLTrainer(
        sd15(), config(reward_scale=0.0, kl_weight=1.0, learning_rate=2e-2), {"red": redness}, PROMPTS
    )
    first = trainer.train_step()
    assert first["loss_kl"] == 0.0  # LoRA starts at B = 0, i.e. exactly the reference model
    with torch.no_grad():
        for name, p in trainer.named_params.items():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    adapter = trainer.adapter
    cond = adapter.encode_prompts(PROMPTS, guided=False, height=32, width=32)
    probe_x = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    probe_t = torch.tensor(500)

    def distance() -> float:
        with torch.no_grad():
            ours = adapter.denoise(adapter.unet, probe_x, probe_t, cond.cond)
            with trainer.reference_unet() as reference:
                ref = adapter.denoise(reference, probe_x, probe_t, cond.cond)
        return float((ours - ref).pow(2).mean())

    before = distance()
    kls = [trainer.train_step()["loss_kl"] for _ in range(8)]
    assert before > 0 and all(k > 0 for k in kls)
    after = distance()
    assert after < 0.5 * before


def test_kl_reference_is_a_frozen_copy_in_full_mode():
    adapter = sd15()
    trainer = ReFLTrainer(
        adapter, config(train_mode="full", kl_weight=1.0, learning_rate=1e-3), {"red": redness}, PROMPTS
    )
    assert trainer._reference is not None and trainer._reference is not adapter.unet
    reference_before = snapshot(trainer._reference)
    assert trainer.train_step()["loss_kl"] == 0.0
    assert trainer.train_step()["loss_kl"] > 0
    assert not changed(reference_before, trainer._reference)


def test_gradient_checkpointing_gives_the_same_update():
    plain = _first_step_grads(config(max_grad_norm=None), {"red": redness})
    checkpointed = _first_step_grads(
        config(max_grad_norm=None, gradient_checkpointing=True), {"red": redness}
    )
    _assert_grads_close(checkpointed, plain)


def test_classifier_free_guidance_in_the_grad_step_changes_the_gradient():
    plain = _first_step_grads(config(max_grad_norm=None), {"red": redness})
    guided = _first_step_grads(config(max_grad_norm=None, guidance_scale=5.0), {"red": redness})
    assert any(not torch.allclose(plain[n], guided[n]) for n in plain)


def test_optional_optimisers():
    trainer = ReFLTrainer(sd15(), config(optimizer="adafactor"), {"red": redness}, PROMPTS)
    before = {n: p.detach().clone() for n, p in trainer.named_params.items()}
    trainer.train_step()
    assert any(not torch.equal(before[n], p) for n, p in trainer.named_params.items())
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(OptimizerUnavailable, match="bitsandbytes"):
            ReFLTrainer(sd15(), config(optimizer="adamw_8bit"), {"red": redness}, PROMPTS)


def test_learning_rate_warms_up_linearly():
    trainer = ReFLTrainer(sd15(), config(lr_warmup_steps=4, max_steps=3), {"red": redness}, PROMPTS)
    lrs = [trainer.train_step()["lr"] for _ in range(3)]
    assert lrs == pytest.approx([2.5e-3, 5e-3, 7.5e-3])


def test_progress_callback_can_stop_the_run(tmp_path):
    trainer = ReFLTrainer(sd15(), config(max_steps=10), {"red": redness}, PROMPTS, output_dir=tmp_path)
    seen = []
    summary = trainer.train(lambda step, total, metrics: seen.append((step, total)) or step < 2)
    assert seen == [(1, 10), (2, 10)]
    assert summary.stop_reason == "requested" and summary.steps == 2
    assert read_checkpoint_meta(tmp_path / "last")["metadata"]["step"] == 2


def test_stop_step_is_drawn_from_the_late_range():
    trainer = ReFLTrainer(
        sd15(), config(num_inference_steps=8, late_steps=3, max_steps=8), {"red": redness}, PROMPTS
    )
    stops = {int(trainer.train_step()["stop_index"]) for _ in range(8)}
    assert stops <= {5, 6, 7} and len(stops) >= 2


@pytest.mark.parametrize(
    "bad",
    [
        dict(late_steps=0),
        dict(late_steps=41),
        dict(guidance_scale=0.5),
        dict(learning_rate=0.0),
        dict(phi="square"),
        dict(train_mode="half"),
        dict(ema_decay=1.0),
        dict(kl_weight=-1.0),
    ],
)
def test_config_rejects_invalid_values(bad):
    with pytest.raises(ValueError):
        ReFLConfig(**bad)


def test_default_stop_range_is_the_last_ten_of_forty():
    assert ReFLConfig().stop_step_range == (30, 39)


def test_three_real_reward_models_stay_frozen_in_eval_mode_while_lora_trains():
    from training.ml.reward.config import CATEGORIES, RewardModelConfig
    from training.ml.reward.model import build_reward_model

    models = {c: build_reward_model(RewardModelConfig.tiny(c), seed=i) for i, c in enumerate(CATEGORIES)}
    before = {c: snapshot(m) for c, m in models.items()}
    assert all(any(p.requires_grad for p in m.parameters()) for m in models.values())
    rewards = {c: RewardSpec(m.score, w) for (c, m), w in zip(models.items(), (1.0, 0.5, 0.25), strict=True)}
    trainer = ReFLTrainer(sd15(), config(max_steps=2), rewards, PROMPTS)
    lora_before = {n: p.detach().clone() for n, p in trainer.named_params.items()}
    metrics = trainer.train()
    assert set(metrics.last_metrics) >= {f"reward/{c}" for c in CATEGORIES}
    for c, m in models.items():
        assert not m.training and not changed(before[c], m)
        assert all(not p.requires_grad and p.grad is None for p in m.parameters())
    assert any(not torch.equal(lora_before[n], p) for n, p in trainer.named_params.items())
