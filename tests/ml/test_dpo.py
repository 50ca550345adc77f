"""Diffusion-DPO: the loss by hand, the frozen reference, label/β behaviour, learning a preference, resume."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.ml.test_refl_world import SMALL
from training.ml.common import CheckpointError, read_checkpoint_meta
from training.ml.dpo.config import DPOConfig
from training.ml.dpo.losses import denoising_errors, dpo_logits, dpo_loss, implicit_reward_accuracy
from training.ml.dpo.trainer import DPOTrainer, training_pairs
from training.ml.refl.config import LoRASettings
from training.ml.refl.sampler import sample
from training.ml.refl.world_adapter import WorldAdapter
from training.ml.reward.data import PairRecord
from training.ml.world.layout import render_prompt
from training.ml.world.model import WorldDiffusionModel

PROMPT = "a square and a green circle"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _render(text: str, seed: int) -> torch.Tensor:
    array = np.array(render_prompt(text, seed=seed, size=32), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)


class RenderedPairs:
    """Pairs of world renders that differ in the square's colour: the winner's square is ``preferred``."""

    def __init__(self, n: int = 8, preferred: str = "red", other: str = "blue") -> None:
        self.images: dict[str, torch.Tensor] = {}
        self.pairs: list[PairRecord] = []
        for i in range(n):
            win, lose = f"{preferred}-{i}.png", f"{other}-{i}.png"
            self.images[win] = _render(f"a {preferred} square and a green circle", i)
            self.images[lose] = _render(f"a {other} square and a green circle", i)
            self.pairs.append(pair(i, win, lose))

    def __call__(self, path: str, sha256: str) -> torch.Tensor:
        return self.images[path]


def pair(i: int, winner: str, loser: str, label: float = 1.0, weight: float = 1.0) -> PairRecord:
    return PairRecord(
        pair_id=i,
        prompt_id=0,
        prompt=PROMPT,
        category="attribute_binding",
        subcategory=None,
        split="train",
        winner_id=2 * i,
        winner_sha256=winner,
        winner_path=winner,
        loser_id=2 * i + 1,
        loser_sha256=loser,
        loser_path=loser,
        label=label,
        weight=weight,
    )


def swapped(record: PairRecord) -> PairRecord:
    return pair(record.pair_id, record.loser_path, record.winner_path)


def world_adapter(seed: int = 0) -> WorldAdapter:
    torch.manual_seed(seed)
    return WorldAdapter(WorldDiffusionModel(SMALL))


def config(**overrides) -> DPOConfig:
    base = dict(
        beta=500.0,
        batch_size=4,
        max_steps=3,
        learning_rate=1e-2,
        weight_decay=0.0,
        lora=LoRASettings(rank=4),
    )
    base.update(overrides)
    return DPOConfig(**base)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def red_share(images: torch.Tensor) -> float:
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    return float(((r > g + 0.15) & (r > b + 0.15)).float().mean())


# ------------------------------------------------------------------------------------ the loss


def test_loss_equals_the_hand_computed_value_on_two_pairs():
    # Per-sample mean squared errors: pair A's winner/loser under the model and the reference, then B's.
    target = torch.zeros(2, 1, 2, 2)
    model_w = denoising_errors(torch.tensor([0.3, 0.5]).sqrt().view(2, 1, 1, 1).expand(2, 1, 2, 2), target)
    torch.testing.assert_close(model_w, torch.tensor([0.3, 0.5]))
    model_l, ref_w, ref_l = torch.tensor([0.6, 0.2]), torch.tensor([0.5, 0.4]), torch.tensor([0.4, 0.3])
    z = dpo_logits(model_w, model_l, ref_w, ref_l, beta=2.0)
    # A: −½·2·[(0.3 − 0.5) − (0.6 − 0.4)] = 0.4; B: −½·2·[(0.5 − 0.4) − (0.2 − 0.3)] = −0.2.
    torch.testing.assert_close(z, torch.tensor([0.4, -0.2]))
    expected = (math.log1p(math.exp(-0.4)) + math.log1p(math.exp(0.2))) / 2  # 0.65557706...
    assert float(dpo_loss(z)) == pytest.approx(expected, abs=1e-6)
    assert float(implicit_reward_accuracy(z)) == 0.5
    assert float(implicit_reward_accuracy(torch.tensor([0.4, 0.0]))) == 0.75


def test_small_beta_gives_log_two_and_swapped_labels_flip_the_margin():
    gen = torch.Generator().manual_seed(0)
    mw, ml, rw, rl = (torch.rand(5, generator=gen) for _ in range(4))
    assert float(dpo_loss(dpo_logits(mw, ml, rw, rl, beta=1e-6))) == pytest.approx(math.log(2), abs=1e-6)
    z = dpo_logits(mw, ml, rw, rl, beta=3.0)
    torch.testing.assert_close(dpo_logits(ml, mw, rl, rw, beta=3.0), -z)
    # A tie's soft label makes the loss symmetric in the sign of the margin.
    half = torch.full_like(z, 0.5)
    torch.testing.assert_close(dpo_loss(z, half), dpo_loss(-z, half))
    # Pair weights scale each pair's share of the mean; weight 0 removes it.
    weights = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(dpo_loss(z, weights=weights), dpo_loss(z[:1]) / 5)


def test_trainer_loss_is_log_two_at_the_reference_and_swapping_pairs_negates_its_logits():
    data = RenderedPairs(4)
    trainer = DPOTrainer(world_adapter(), config(train_mode="full"), data.pairs, data)
    first = trainer.train_step()
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the policy starts at the reference
    trainer.train_step()
    records = data.pairs[:3]
    with torch.no_grad():
        z = trainer._logits(records, torch.Generator().manual_seed(5))["logits"]
        z_swapped = trainer._logits([swapped(r) for r in records], torch.Generator().manual_seed(5))["logits"]
    assert z.abs().min() > 0
    torch.testing.assert_close(z_swapped, -z, rtol=1e-5, atol=1e-6)


def test_small_beta_keeps_the_trained_loss_at_log_two():
    data = RenderedPairs(4)
    trainer = DPOTrainer(world_adapter(), config(train_mode="full", beta=1e-6), data.pairs, data)
    for _ in range(3):
        metrics = trainer.train_step()
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-5)


# ------------------------------------------------------------------------------------ the reference


def test_full_mode_reference_is_a_frozen_copy_that_gets_no_gradient_and_never_changes():
    data = RenderedPairs(4)
    trainer = DPOTrainer(world_adapter(), config(train_mode="full"), data.pairs, data)
    reference = trainer._reference
    assert reference is not None and reference is not trainer.unet
    before_ref, before_policy = snapshot(reference), snapshot(trainer.unet)
    trainer.train()
    for name, param in reference.named_parameters():
        assert not param.requires_grad and param.grad is None, name
        assert torch.equal(param, before_ref[name]), name
    assert any(not torch.equal(p, before_policy[n]) for n, p in trainer.unet.named_parameters())


def test_lora_reference_is_the_base_model_whose_weights_and_predictions_never_change():
    data = RenderedPairs(4)
    trainer = DPOTrainer(world_adapter(), config(), data.pairs, data)
    base = {n: p.detach().clone() for n, p in trainer.unet.named_parameters() if "lora" not in n}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([100, 700])
    cond = trainer._cond([PROMPT, PROMPT])
    with torch.no_grad(), trainer.reference_unet() as ref:
        ref_before = trainer.adapter.denoise(ref, x, t, cond)
    trainer.train()
    with torch.no_grad():
        with trainer.reference_unet() as ref:
            ref_after = trainer.adapter.denoise(ref, x, t, cond)
        policy = trainer.adapter.denoise(trainer.unet, x, t, cond)
    torch.testing.assert_close(ref_after, ref_before, rtol=0, atol=0)
    assert (policy - ref_after).abs().max() > 1e-4  # the adapters are back on and have learnt
    for name, param in trainer.unet.named_parameters():
        if "lora" not in name:
            assert not param.requires_grad and param.grad is None, name
            assert torch.equal(param, base[name]), name


# ------------------------------------------------------------------------------------ learning


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_lora_and_full_raise_the_implicit_reward_accuracy_on_their_pairs(mode):
    data = RenderedPairs(6)
    lr = 1e-2 if mode == "lora" else 1e-3
    trainer = DPOTrainer(
        world_adapter(), config(train_mode=mode, max_steps=8, learning_rate=lr), data.pairs, data
    )
    before = trainer.evaluate_pairs(data.pairs, draws=2)
    assert before["implicit_acc"] == 0.5 and before["loss"] == pytest.approx(math.log(2), abs=1e-6)
    trainer.train()
    after = trainer.evaluate_pairs(data.pairs, draws=2)
    assert after["implicit_acc"] > 0.75
    assert after["loss"] < math.log(2)


def test_a_preference_for_red_raises_the_red_share_of_samples_and_blue_lowers_it():
    noise = WorldDiffusionModel.initial_noise(WorldDiffusionModel(SMALL), list(range(8)))
    prompts = [PROMPT] * 8

    def red_after(preferred: str, other: str) -> tuple[float, float]:
        data = RenderedPairs(8, preferred, other)
        adapter = world_adapter()
        before = sample(adapter, prompts, num_inference_steps=8, latents=noise.clone())
        trainer = DPOTrainer(
            adapter, config(train_mode="full", max_steps=6, learning_rate=3e-3), data.pairs, data
        )
        trainer.train()
        trainer.unet.eval()
        after = sample(adapter, prompts, num_inference_steps=8, latents=noise.clone())
        return red_share(before), red_share(after)

    base, red = red_after("red", "blue")
    assert red > base + 0.1
    base_again, blue = red_after("blue", "red")
    assert base_again == base
    assert blue < red - 0.1  # the colour that moved is the preferred one, not any colour


# ------------------------------------------------------------------------------------ data handling


def test_ties_are_skipped_or_kept_with_a_soft_label_and_lower_weight():
    pairs = [pair(1, "a", "b"), pair(2, "c", "d", label=0.5), pair(3, "e", "f", weight=0.25)]
    skipped = training_pairs(pairs, config())
    assert [p.record.pair_id for p in skipped] == [1, 3] and [p.weight for p in skipped] == [1.0, 1.0]
    kept = training_pairs(pairs, config(ties="down_weight", tie_weight=0.3, use_pair_weights=True))
    assert [(p.record.pair_id, p.label, p.weight) for p in kept] == [
        (1, 1.0, 1.0),
        (2, 0.5, 0.3),
        (3, 1.0, 0.25),
    ]
    with pytest.raises(ValueError, match="at least one pair"):
        DPOTrainer(world_adapter(), config(), [pairs[1]], lambda p, s: torch.zeros(3, 32, 32))


def test_pair_images_are_encoded_once_and_resized_to_the_training_size():
    data = RenderedPairs(2)
    calls: list[str] = []

    def loader(path: str, sha256: str) -> torch.Tensor:
        calls.append(path)
        return torch.nn.functional.interpolate(data(path, sha256)[None], size=(48, 48))[0]

    trainer = DPOTrainer(world_adapter(), config(max_steps=4), data.pairs, loader)
    trainer.train()
    assert sorted(calls) == sorted(data.images)
    winner, loser = trainer.pair_latents(data.pairs[0])
    assert winner.shape == loser.shape == (3, 32, 32)


@pytest.mark.parametrize(
    "bad",
    [
        dict(beta=0.0),
        dict(beta=float("inf")),
        dict(batch_size=0),
        dict(learning_rate=0.0),
        dict(ties="average"),
        dict(tie_weight=0.0),
        dict(train_mode="half"),
        dict(height=4),
        dict(max_grad_norm=0.0),
    ],
)
def test_config_rejects_invalid_values(bad):
    with pytest.raises(ValueError):
        config(**bad)


# ------------------------------------------------------------------------------------ checkpoints


def _resume_run(tmp_path: Path, split: int | None) -> tuple[DPOTrainer, list[dict[str, float]]]:
    data = RenderedPairs(4)
    make = lambda steps: DPOTrainer(  # noqa: E731
        world_adapter(),
        config(max_steps=steps, lora=LoRASettings(rank=4, dropout=0.1)),
        data.pairs,
        data,
        output_dir=tmp_path / "run",
    )
    log: list[dict[str, float]] = []
    if split is None:
        trainer = make(4)
        trainer.train(lambda step, total, metrics: log.append(metrics))
        return trainer, log
    make(split).train(lambda step, total, metrics: log.append(metrics))
    resumed = make(4)
    resumed.load(tmp_path / "run" / "last")
    assert resumed.step == split
    resumed.train(lambda step, total, metrics: log.append(metrics))
    return resumed, log


def test_resume_from_last_continues_identically(tmp_path):
    straight, log_a = _resume_run(tmp_path / "a", None)
    resumed, log_b = _resume_run(tmp_path / "b", 2)
    assert resumed.step == straight.step == 4
    assert log_a == log_b
    for name, param in straight.named_params.items():
        assert torch.equal(param, resumed.named_params[name]), name


def test_resume_refuses_a_checkpoint_of_a_different_run(tmp_path):
    data = RenderedPairs(4)
    trainer = DPOTrainer(world_adapter(), config(max_steps=1), data.pairs, data, output_dir=tmp_path)
    trainer.train()
    other = DPOTrainer(world_adapter(), config(beta=100.0), data.pairs, data)
    with pytest.raises(CheckpointError, match="beta"):
        other.load(tmp_path / "last")


def test_checkpoint_is_self_describing_and_load_policy_applies_it(tmp_path, tiny_base):
    from training.ml.algorithm1.steps import load_policy
    from training.ml.refl.world_adapter import load_world_adapter

    data = RenderedPairs(4)
    for mode in ("lora", "full"):
        adapter = load_world_adapter(tiny_base)
        trainer = DPOTrainer(adapter, config(train_mode=mode), data.pairs, data, output_dir=tmp_path / mode)
        summary = trainer.train()
        meta = read_checkpoint_meta(summary.checkpoint, kind="dpo")
        assert meta["config"]["dpo"]["beta"] == 500.0 and meta["config"]["train_mode"] == mode
        assert meta["config"]["model"]["family"] == "world" and meta["metadata"]["step"] == 3
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        t = torch.tensor([50, 900])
        cond = trainer._cond([PROMPT, PROMPT])
        trainer.unet.eval()
        with torch.no_grad():
            trained = adapter.denoise(trainer.unet, x, t, cond)
            applied = load_policy("world", str(tiny_base), [summary.checkpoint])
            chained = applied.denoise(applied.unet, x, t, cond)
            base = load_world_adapter(tiny_base)
            untouched = base.denoise(base.unet, x, t, cond)
        torch.testing.assert_close(chained, trained, rtol=1e-4, atol=1e-5)
        assert (chained - untouched).abs().max() > 1e-4


# ------------------------------------------------------------------------------------ latent families


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_latent_families_train_lora_on_vae_latents_and_their_checkpoint_applies(family, tmp_path):
    from training.ml.refl.adapters import SD15Adapter, SDXLAdapter
    from training.ml.refl.stage import apply_refl_checkpoint
    from training.ml.refl.tiny import tiny_sd15_pipeline, tiny_sdxl_pipeline

    tokenizer = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizers" / "clip"

    def make():
        if family == "sd15":
            return SD15Adapter(tiny_sd15_pipeline(tokenizer))
        return SDXLAdapter(tiny_sdxl_pipeline(tokenizer))

    adapter = make()
    frozen = {name: snapshot(m) for name, m in adapter.frozen_modules().items()}
    data = RenderedPairs(3)
    trainer = DPOTrainer(adapter, config(max_steps=2, batch_size=2), data.pairs, data, output_dir=tmp_path)
    summary = trainer.train()
    assert all("lora" in n for n in trainer.named_params)
    winner, _ = trainer.pair_latents(data.pairs[0])
    assert winner.shape == adapter.latent_shape(1, trainer.height, trainer.width)[1:]
    for name, module in adapter.frozen_modules().items():
        assert all(torch.equal(frozen[name][n], p) for n, p in module.named_parameters()), name
        assert all(p.grad is None for p in module.parameters()), name
    assert "implicit_acc" in summary.last_metrics and summary.last_metrics["loss"] > 0

    fresh = make()
    apply_refl_checkpoint(fresh, summary.checkpoint)
    latents = torch.randn((2, *winner.shape), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 600])
    cond = trainer._cond([PROMPT, PROMPT])
    trainer.unet.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            fresh.denoise(fresh.unet, latents, t, cond),
            adapter.denoise(trainer.unet, latents, t, cond),
            rtol=1e-4,
            atol=1e-5,
        )


# ------------------------------------------------------------------------------------ Algorithm 1 step


@pytest.mark.parametrize("lora", [True, False])
def test_finetune_dpo_chains_iterations_and_reports_held_out_implicit_accuracy(tmp_path, tiny_base, lora):
    from tests.ml.test_algorithm1_steps import tiny_round
    from training.ml.algorithm1.steps import finetune_dpo, load_policy

    config = tiny_round(lora=lora, lora_rank=2, steps=4, batch_size=2)
    data = RenderedPairs(6)
    # The round's fine-tuning budget, with a β and learning rate sized for a tiny random model.
    dpo = round_dpo_settings(config, lora, learning_rate=1e-2 if lora else 1e-3)
    chain: list[Path] = []
    results = []
    for k in range(2):
        result = finetune_dpo(
            config,
            family="world",
            base_path=str(tiny_base),
            chain=chain,
            pairs=data.pairs[:4],
            loader=data,
            output_dir=tmp_path / f"it{k}",
            iteration=k,
            heldout_pairs=data.pairs[4:],
            dpo=dpo(k),
        )
        results.append(result)
        chain.append(Path(result.checkpoint.path))
    first = results[0]
    assert first.checkpoint.kind == "dpo" and first.checkpoint.metrics["steps"] == 4
    assert [c["step"] for c in first.curve] == [0, 1, 2, 3, 4]
    assert first.curve[0]["val/implicit_acc"] == 0.5  # the policy is its own reference at step 0
    assert "val/implicit_acc" in first.curve[-1] and "loss" in first.curve[1]
    # Iteration 1's reference is p_1, so it starts at accuracy ½ again.
    assert results[1].curve[0]["val/implicit_acc"] == 0.5
    p0, p1, p2 = (load_policy("world", str(tiny_base), chain[:k]) for k in range(3))
    weights = [dict(p.unet.named_parameters()) for p in (p0, p1, p2)]
    assert all(set(w) == set(weights[0]) for w in weights)
    assert any(not torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    assert any(not torch.equal(weights[1][n], weights[2][n]) for n in weights[0])


def round_dpo_settings(config, lora: bool, learning_rate: float):
    from training.ml.algorithm1.steps import dpo_config

    def make(iteration: int) -> DPOConfig:
        base = dpo_config(config, iteration)
        assert base.max_steps == 4 and base.train_mode == ("lora" if lora else "full")
        assert base.seed == config.seed + iteration
        return dataclasses.replace(base, beta=500.0, learning_rate=learning_rate)

    return make


def test_applying_a_checkpoint_that_is_neither_refl_nor_dpo_is_refused(tmp_path):
    from training.ml.refl.stage import apply_refl_checkpoint
    from training.ml.reward.checkpoint import save_reward_model
    from training.ml.reward.config import RewardModelConfig
    from training.ml.reward.model import build_reward_model

    path = save_reward_model(build_reward_model(RewardModelConfig.tiny("spatial"), seed=0), tmp_path / "rm")
    adapter = world_adapter()
    before = snapshot(adapter.unet)
    with pytest.raises(CheckpointError, match="expected one of"):
        apply_refl_checkpoint(adapter, path)
    assert all(torch.equal(before[n], p) for n, p in adapter.unet.named_parameters())


def test_progress_callback_can_stop_the_run_and_the_checkpoint_records_where(tmp_path):
    data = RenderedPairs(4)
    trainer = DPOTrainer(world_adapter(), config(max_steps=5), data.pairs, data, output_dir=tmp_path)
    summary = trainer.train(lambda step, total, metrics: step < 2)
    assert summary.stopped_early and summary.stop_reason == "requested" and summary.steps == 2
    assert read_checkpoint_meta(tmp_path / "last", kind="dpo")["metadata"]["step"] == 2


def test_config_round_trips_through_json():
    from training.ml.common import config_from_dict, config_to_dict

    cfg = config(ties="down_weight", tie_weight=0.25, use_pair_weights=True, lora=LoRASettings(rank=8))
    assert config_from_dict(DPOConfig, config_to_dict(cfg)) == cfg
