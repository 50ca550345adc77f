"""Reward-hacking guard: bookkeeping rules, and a tiny ReFL run against a deliberately hackable reward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.ml.common import load_weights
from training.ml.refl.adapters import SD15Adapter
from training.ml.refl.config import GuardConfig, LoRASettings, ReFLConfig
from training.ml.refl.guard import GuardEvaluation, HackingGuard
from training.ml.refl.sampler import sample
from training.ml.refl.tiny import tiny_sd15_pipeline
from training.ml.refl.trainer import ReFLTrainer

TOKENIZER = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizers" / "clip"
PROMPTS = ["a red cube left of a blue ball", "two green cats", "a small house under a tree"]
VALIDATION = ["a dog on a sofa", "three yellow cups"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_guard_tracks_the_best_held_out_evaluation():
    guard = HackingGuard(GuardConfig(every=1, patience=2))
    assert guard.observe(GuardEvaluation(0, reward=0.0, heldout=0.5)).improved
    assert guard.observe(GuardEvaluation(1, reward=0.2, heldout=0.6)).improved
    decision = guard.observe(GuardEvaluation(2, reward=0.1, heldout=0.55))
    assert not decision.improved and not decision.diverging  # both fell: noise, not hacking
    assert guard.best == GuardEvaluation(1, 0.2, 0.6)


def test_guard_stops_after_patience_consecutive_divergences():
    guard = HackingGuard(GuardConfig(every=1, patience=2))
    guard.observe(GuardEvaluation(0, 0.0, 0.5))
    first = guard.observe(GuardEvaluation(1, 0.3, 0.4))
    assert first.diverging and not first.stop
    assert guard.observe(GuardEvaluation(2, 0.5, 0.3)).stop


def test_a_non_diverging_evaluation_resets_the_streak():
    guard = HackingGuard(GuardConfig(every=1, patience=2))
    guard.observe(GuardEvaluation(0, 0.0, 0.5))
    guard.observe(GuardEvaluation(1, 0.3, 0.4))
    assert not guard.observe(GuardEvaluation(2, -0.1, 0.45)).diverging
    assert not guard.observe(GuardEvaluation(3, 0.4, 0.4)).stop


def test_guard_thresholds_ignore_small_moves():
    guard = HackingGuard(GuardConfig(every=1, patience=1, min_reward_rise=0.1, min_heldout_drop=0.1))
    guard.observe(GuardEvaluation(0, 0.0, 0.5))
    assert not guard.observe(GuardEvaluation(1, 0.05, 0.3)).diverging  # reward barely rose
    assert not guard.observe(GuardEvaluation(2, 0.5, 0.45)).diverging  # held-out barely fell
    assert guard.observe(GuardEvaluation(3, 0.5, 0.3)).stop


def test_guard_state_round_trips():
    guard = HackingGuard(GuardConfig(every=1, patience=3))
    for i, (r, h) in enumerate([(0.0, 0.5), (0.2, 0.6), (0.4, 0.5)]):
        guard.observe(GuardEvaluation(i, r, h))
    restored = HackingGuard(GuardConfig(every=1, patience=3))
    restored.load_state_dict(guard.state_dict())
    assert restored.history == guard.history and restored.best == guard.best and restored.streak == 1
    with pytest.raises(ValueError):
        guard.observe(GuardEvaluation(3, float("nan"), 0.1))


def redness(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
    """The hackable reward: it only likes a red background, whatever the prompt asks for."""
    return images[:, 0].mean((1, 2))


def _hackable_run(tmp_path: Path | None):
    adapter = SD15Adapter(tiny_sd15_pipeline(TOKENIZER))
    guard = GuardConfig(every=1, patience=2, min_reward_rise=0.002, min_heldout_drop=0.002, seed=5)
    cfg = ReFLConfig(
        num_inference_steps=6,
        late_steps=3,
        batch_size=2,
        max_steps=15,
        learning_rate=5e-2,
        reward_scale=1.0,
        phi="linear",
        weight_decay=0.0,
        lora=LoRASettings(rank=4),
        guard=guard,
    )
    # The held-out evaluator agrees that a bit more red helps (up to a target just above the base model),
    # then disagrees: past the target every extra bit of red is penalised — a reward being exploited.
    base = sample(
        adapter, VALIDATION, num_inference_steps=6, generator=torch.Generator().manual_seed(guard.seed)
    )
    target = float(redness(VALIDATION, base).mean()) + 0.008

    def heldout(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        return -((redness(prompts, images) - target) ** 2) * 1e3

    trainer = ReFLTrainer(
        adapter,
        cfg,
        {"red": redness},
        PROMPTS,
        heldout=heldout,
        validation_prompts=VALIDATION,
        output_dir=tmp_path,
    )
    weights_per_step = {}
    trainer_summary = trainer.train(
        lambda step, total, metrics: weights_per_step.__setitem__(
            step, {n: p.detach().clone() for n, p in trainer.named_params.items()}
        )
    )
    return trainer, trainer_summary, weights_per_step


def test_guard_fires_against_a_hackable_reward_and_rolls_back_to_the_best_checkpoint(tmp_path):
    trainer, summary, weights_per_step = _hackable_run(tmp_path)
    history = summary.guard_history
    assert summary.stop_reason == "reward_hacking" and summary.stopped_early
    assert summary.steps < trainer.config.max_steps
    best = max(history, key=lambda e: e["heldout"])
    assert summary.best_step == best["step"] >= 1  # some optimisation helped before it started to hurt
    assert summary.restored_step == best["step"]
    # The last two evaluations are the divergence: reward above the best point, held-out below it.
    assert all(e["reward"] > best["reward"] and e["heldout"] < best["heldout"] for e in history[-2:])
    # Rolled back: the live weights are the best checkpoint's, not the last step's.
    saved_best = load_weights(tmp_path / "best")
    for name, param in trainer.named_params.items():
        assert torch.equal(param, saved_best[name]), name
        assert torch.equal(param, weights_per_step[best["step"]][name]), name
    last = load_weights(tmp_path / "last")
    assert any(not torch.equal(last[n], saved_best[n]) for n in last)
    assert summary.checkpoint == tmp_path / "best"


def test_rollback_without_an_output_folder_uses_the_in_memory_snapshot():
    trainer, summary, weights_per_step = _hackable_run(None)
    assert summary.stop_reason == "reward_hacking"
    for name, param in trainer.named_params.items():
        assert torch.equal(param, weights_per_step[summary.best_step][name]), name


def test_guard_does_not_fire_when_the_held_out_signal_agrees():
    adapter = SD15Adapter(tiny_sd15_pipeline(TOKENIZER))
    cfg = ReFLConfig(
        num_inference_steps=6,
        late_steps=3,
        max_steps=4,
        learning_rate=5e-2,
        reward_scale=1.0,
        phi="linear",
        guard=GuardConfig(every=2, patience=1),
    )
    trainer = ReFLTrainer(
        adapter, cfg, {"red": redness}, PROMPTS, heldout=redness, validation_prompts=VALIDATION
    )
    summary = trainer.train()
    assert summary.stop_reason is None and summary.steps == 4
    assert [e["step"] for e in summary.guard_history] == [0, 2, 4]
    assert summary.best_step == 4


def test_guard_needs_a_held_out_evaluator():
    with pytest.raises(ValueError, match="held-out"):
        ReFLTrainer(
            SD15Adapter(tiny_sd15_pipeline(TOKENIZER)),
            ReFLConfig(guard=GuardConfig(every=5)),
            {"red": redness},
            PROMPTS,
        )


def test_a_guarded_run_resumes_with_its_guard_history_and_best_snapshot(tmp_path):
    cfg = ReFLConfig(
        num_inference_steps=4,
        late_steps=2,
        max_steps=4,
        learning_rate=5e-2,
        reward_scale=1.0,
        phi="linear",
        guard=GuardConfig(every=1, patience=10),
    )

    def make() -> ReFLTrainer:
        adapter = SD15Adapter(tiny_sd15_pipeline(TOKENIZER))
        heldout = lambda prompts, images: -redness(prompts, images)  # noqa: E731
        return ReFLTrainer(
            adapter,
            cfg,
            {"red": redness},
            PROMPTS,
            heldout=heldout,
            validation_prompts=VALIDATION,
            output_dir=tmp_path,
        )

    straight = make().train()
    first = make()
    first.train(lambda step, total, metrics: step < 2)
    resumed = make()
    resumed.load(tmp_path / "last")
    assert [e.step for e in resumed.guard.history] == [0, 1, 2]
    summary = resumed.train()
    assert summary.guard_history == straight.guard_history
    assert summary.best_step == straight.best_step


def test_paired_gain_is_the_mean_difference_minus_z_standard_errors():
    from training.ml.refl.guard import paired_gain

    # Differences 0.1 everywhere: no spread, the interval is the mean itself.
    assert paired_gain([0.3, 0.5, 0.7, 0.9], [0.2, 0.4, 0.6, 0.8]) == pytest.approx((0.1, 0.1))
    # Differences [0, 0, 0, 0.2]: mean 0.05, sample sd 0.1, SE 0.05, lower 0.05 - 1.96 * 0.05 = -0.048.
    assert paired_gain([0.2, 0.4, 0.6, 1.0], [0.2, 0.4, 0.6, 0.8]) == pytest.approx((0.05, -0.048))


def test_the_paired_rule_keeps_step_0_until_a_gain_is_significant():
    guard = HackingGuard(GuardConfig(every=1, patience=3, rule="paired"))
    ref = (0.2, 0.4, 0.6, 0.8)
    assert guard.observe(GuardEvaluation(0, 0.0, 0.5, prompt_scores=ref)).improved
    # The mean rose (0.55 > 0.5) on one lucky prompt: the old rule would keep it, the paired rule does not.
    assert not guard.observe(GuardEvaluation(1, 0.1, 0.55, prompt_scores=(0.2, 0.4, 0.6, 1.0))).improved
    assert guard.best.step == 0
    # A gain on every prompt is kept, with its mean and lower bound recorded.
    assert guard.observe(GuardEvaluation(2, 0.2, 0.6, prompt_scores=(0.3, 0.5, 0.7, 0.9))).improved
    assert (guard.best.step, guard.best.gain, guard.best.gain_low) == (
        2,
        pytest.approx(0.1),
        pytest.approx(0.1),
    )
    # A significant but smaller gain does not replace a bigger one.
    assert not guard.observe(GuardEvaluation(3, 0.3, 0.55, prompt_scores=(0.25, 0.45, 0.65, 0.85))).improved
    state = guard.state_dict()
    again = HackingGuard(GuardConfig(every=1, patience=3, rule="paired"))
    again.load_state_dict(state)
    assert again.best == guard.best and again.history[0].prompt_scores == ref


def test_a_paired_guard_evaluates_every_prompt_on_several_fixed_seeds():
    adapter = SD15Adapter(tiny_sd15_pipeline(TOKENIZER))
    cfg = ReFLConfig(
        num_inference_steps=4,
        late_steps=2,
        batch_size=2,
        max_steps=2,
        learning_rate=1e-3,
        reward_scale=1.0,
        phi="linear",
        lora=LoRASettings(rank=2),
        guard=GuardConfig(every=1, patience=3, rule="paired", seeds=3, seed=7),
    )
    seen: list[int] = []

    def heldout(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        seen.append(len(prompts))
        return images.mean((1, 2, 3))

    trainer = ReFLTrainer(
        adapter, cfg, {"red": redness}, PROMPTS, heldout=heldout, validation_prompts=VALIDATION
    )
    summary = trainer.train()
    assert seen == [len(VALIDATION) * 3] * 3  # step 0 and both steps, 3 seeds per prompt
    assert [e["step"] for e in summary.guard_history] == [0, 1, 2]
    assert summary.guard_history[0]["gain"] == 0.0 and summary.guard_history[1]["gain"] is not None
    # Step 0 on the same noise twice gives the same per-prompt scores: evaluations are paired.
    first = trainer.guard.history[0].prompt_scores
    # LoRA B back to zero = the step-0 model.
    trainer._load_trainable(
        {n: torch.zeros_like(p) if "lora_B" in n else p.detach() for n, p in trainer.named_params.items()}
    )
    assert trainer._evaluate()[1] == pytest.approx(first)
