"""Reward-ranked fine-tuning as a round objective: its configuration, the samples it keeps, and the
loop's (and so the app's) iteration that trains on them."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from tests.ml.test_refl_loop import tiny_config, tiny_round
from tests.ml.test_refl_world import _one_thread  # noqa: F401
from training.ml.algorithm1.config import RaftStageConfig, RoundConfig, RoundConfigError
from training.ml.algorithm1.gate import GateClosed
from training.ml.algorithm1.steps import (
    finetune,
    load_policy,
    pretrain_data,
    refl_config,
    reward_ranked_samples,
)
from training.ml.loop import loop_prompts, rank_gallery, run_iteration
from training.ml.refl.trainer import RewardSpec

PROMPTS = ["a red circle to the left of a blue square", "a green triangle above a yellow circle", "a star"]


def raft_round(candidates: int = 3, **feedback) -> RoundConfig:
    return dataclasses.replace(tiny_round(**feedback), objective="raft", raft=RaftStageConfig(candidates))


class Redness:
    """A reward function (the share of red in the image) that remembers every image and score it gave."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, torch.Tensor, float]] = []

    def __call__(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        scores = images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))
        self.seen += [(p, im.clone(), float(s)) for p, im, s in zip(prompts, images, scores, strict=True)]
        return scores


# ------------------------------------------------------------------------------------ configuration


def test_the_raft_objective_and_its_candidates_are_validated_and_older_rounds_load_with_the_default():
    assert RoundConfig(objective="raft").raft == RaftStageConfig(candidates=4, caption_dropout=0.1)
    with pytest.raises(RoundConfigError, match="between 2 and 64 candidates"):
        RaftStageConfig(candidates=1)
    with pytest.raises(RoundConfigError, match="caption dropout"):
        RaftStageConfig(caption_dropout=1.0)
    with pytest.raises(RoundConfigError, match="raft"):
        RoundConfig(objective="rejection")
    stored = RoundConfig(objective="raft", raft=RaftStageConfig(8)).to_dict()
    assert RoundConfig.from_dict(stored).raft.candidates == 8
    older = RoundConfig().to_dict()
    del older["raft"]
    assert RoundConfig.from_dict(older) == RoundConfig()
    with pytest.raises(RoundConfigError, match="candidate guidance"):
        RaftStageConfig(guidance_scale=0.5)
    with pytest.raises(RoundConfigError, match="candidate guidance"):
        RaftStageConfig(guidance_scale=float("nan"))
    stored = RoundConfig(objective="raft", raft=RaftStageConfig(guidance_scale=1.0)).to_dict()
    assert RoundConfig.from_dict(stored).raft.guidance_scale == 1.0
    older_raft = RoundConfig(objective="raft").to_dict()
    del older_raft["raft"]["guidance_scale"]
    assert RoundConfig.from_dict(older_raft).raft.guidance_scale is None


def test_raft_trains_on_the_denoising_loss_alone_and_draws_no_other_denoising_data():
    config = raft_round(reward_scale=0.5, pretrain_loss_weight=0.25)
    refl = refl_config(config, 0, guard=True)
    assert (refl.reward_scale, refl.pretrain_loss_weight, refl.caption_dropout) == (0.0, 1.0, 0.1)
    assert refl.pretrain_noise_floor == 0.0
    floored = dataclasses.replace(config, raft=dataclasses.replace(config.raft, noise_floor=0.6))
    assert refl_config(floored, 0, guard=True).pretrain_noise_floor == 0.6
    assert (
        refl_config(dataclasses.replace(floored, objective="refl"), 0, guard=True).pretrain_noise_floor == 0.0
    )
    with pytest.raises(RoundConfigError, match="noise floor"):
        RaftStageConfig(noise_floor=1.0)
    assert pretrain_data(config, "world", 0) is None
    # The same section under ReFL keeps what the admin set.
    as_refl = dataclasses.replace(config, objective="refl")
    as_refl_config = refl_config(as_refl, 0, guard=True)
    assert (as_refl_config.reward_scale, as_refl_config.caption_dropout) == (0.5, 0.0)
    assert len(pretrain_data(as_refl, "world", 0)) == 4


# ------------------------------------------------------------------------------------ the kept samples


def test_each_prompt_keeps_the_candidate_its_reward_ranks_first(tiny_base):
    config = raft_round(candidates=3)
    policy = load_policy("world", str(tiny_base))
    reward = Redness()
    ranked = reward_ranked_samples(config, policy, {"red": RewardSpec(reward)}, PROMPTS, 0, batch_size=6)
    assert [p for p, _ in ranked.samples] == PROMPTS
    assert len(reward.seen) == 3 * len(PROMPTS)
    for prompt, image in ranked.samples:
        candidates = [(im, s) for p, im, s in reward.seen if p == prompt]
        assert len(candidates) == 3
        best = max(candidates, key=lambda c: c[1])
        assert torch.equal(image, best[0])
        # Three different noises: the candidates are different pictures.
        assert not torch.equal(candidates[0][0], candidates[1][0])
    kept = [max(s for p, _, s in reward.seen if p == prompt) for prompt in PROMPTS]
    assert ranked.chosen_reward == pytest.approx(sum(kept) / 3, abs=1e-6)
    assert ranked.candidate_reward == pytest.approx(sum(s for *_, s in reward.seen) / 9, abs=1e-6)
    assert ranked.chosen_reward > ranked.candidate_reward
    assert ranked.metrics(config) == {
        "objective": "raft",
        "candidates": 3,
        "candidate_guidance": config.feedback.guidance_scale,
        "ranked_samples": 3,
        "chosen_reward": ranked.chosen_reward,
        "candidate_reward": ranked.candidate_reward,
    }


def test_candidates_are_drawn_at_the_objectives_own_guidance_when_it_sets_one(tiny_base):
    policy = load_policy("world", str(tiny_base))

    def kept(config: RoundConfig) -> list[torch.Tensor]:
        ranked = reward_ranked_samples(
            config, policy, {"red": RewardSpec(Redness())}, PROMPTS, 0, batch_size=6
        )
        return [image for _, image in ranked.samples]

    guided = raft_round(candidates=2, guidance_scale=3.0)
    unguided = raft_round(candidates=2, guidance_scale=1.0)
    own = dataclasses.replace(guided, raft=RaftStageConfig(2, guidance_scale=1.0))
    # Same noise: the objective's guidance 1 on a guidance-3 round draws what a guidance-1 round draws.
    assert all(torch.equal(a, b) for a, b in zip(kept(own), kept(unguided), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(kept(own), kept(guided), strict=True))
    assert (
        reward_ranked_samples(own, policy, {"red": RewardSpec(Redness())}, PROMPTS[:1], 0).metrics(own)[
            "candidate_guidance"
        ]
        == 1.0
    )


def test_the_kept_samples_repeat_for_an_iteration_and_change_with_the_next(tiny_base):
    config = raft_round(candidates=2)
    policy = load_policy("world", str(tiny_base))

    def draw(iteration: int) -> list[torch.Tensor]:
        ranked = reward_ranked_samples(config, policy, {"red": RewardSpec(Redness())}, PROMPTS[:2], iteration)
        return [image for _, image in ranked.samples]

    first, again, later = draw(0), draw(0), draw(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(first, later, strict=True))


def test_a_stop_request_ends_the_sampling_at_the_next_chunk(tiny_base):
    config = raft_round(candidates=2)
    calls: list[tuple[int, int]] = []

    def progress(step: int, total: int, metrics) -> bool:
        calls.append((step, total))
        return False

    ranked = reward_ranked_samples(
        config,
        load_policy("world", str(tiny_base)),
        {"red": RewardSpec(Redness())},
        PROMPTS,
        0,
        progress=progress,
        batch_size=2,
    )
    assert calls == [(1, 3)] and len(ranked.samples) == 1


# ------------------------------------------------------------------------------------ fine-tuning


def _weights(directory: Path) -> dict[str, str]:
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.glob("*.safetensors"))
    }


def _iteration_on_d0(tmp_path, tiny_base, round_config: RoundConfig, progress=None):
    """The loop's first iteration (reward model, then fine-tuning) on a tiny D_0 of spatial prompts."""
    config = tiny_config(tmp_path / "loop", tiny_base, round=round_config)
    data = rank_gallery(config, loop_prompts(config)[0], tmp_path / "d0")
    result = run_iteration(
        round_config,
        iteration=0,
        records=data.records(),
        image_loader=data.loader(),
        categories=["spatial"],
        base_path=str(tiny_base),
        chain=[],
        train_prompts={"spatial": [p.prompt for p in data.prompts]},
        validation_prompts={},
        output_dir=tmp_path / "it0",
        progress=progress,
    )
    return data, result


def test_a_raft_iteration_trains_on_the_samples_its_reward_models_keep(tmp_path, tiny_base):
    round_config = raft_round(candidates=2, steps=3, guard_every=0, learning_rate=1e-3, gate="off")
    stages: list[tuple[str, int, int]] = []
    _, result = _iteration_on_d0(
        tmp_path, tiny_base, round_config, lambda stage, step, total, m: stages.append((stage, step, total))
    )
    info = result.finetuned.checkpoint
    assert info.kind == "refl" and info.metrics["objective"] == "raft" and info.metrics["steps"] == 3
    assert info.metrics["ranked_samples"] == 3 and info.metrics["candidates"] == 2
    assert info.metrics["chosen_reward"] >= info.metrics["candidate_reward"]
    # The denoising loss alone trained: no reward loss, no sampling pass inside the steps.
    last = info.metrics["last"]
    assert last["loss"] == pytest.approx(last["loss_pretrain"]) and last["loss_reward"] == 0.0
    assert "reward" not in last
    assert ("iter0/refl", 3, 3) in stages  # the sampling reported its progress (3 prompts) before training
    assert _weights(Path(info.path)) != _weights(Path(tiny_base))


def test_a_round_with_an_ema_deploys_the_average_of_its_fine_tuned_weights(tmp_path, tiny_base):
    from safetensors.torch import load_file

    from training.ml.common import load_weights
    from training.ml.refl.trainer import EMA_FILE

    round_config = raft_round(
        candidates=2, steps=3, guard_every=0, learning_rate=1e-3, gate="off", ema_decay=0.5
    )
    assert refl_config(round_config, 0, guard=False).ema_decay == 0.5
    _, result = _iteration_on_d0(tmp_path, tiny_base, round_config)
    directory = Path(result.finetuned.checkpoint.path)
    average, raw = load_file(str(directory / EMA_FILE)), load_weights(directory)
    deployed = dict(load_policy("world", str(tiny_base), [directory]).unet.named_parameters())
    moved = [name for name in average if not torch.equal(average[name], raw[name])]
    assert moved, "three steps at lr 1e-3 leave the average behind the raw weights"
    for name in moved:
        assert torch.equal(deployed[name].detach(), average[name])


def test_the_warm_up_reaches_every_fine_tuning_objective_and_its_learning_rate_rises_linearly():
    from training.ml.algorithm1.steps import dpo_config
    from training.ml.refl.optim import set_learning_rate

    with pytest.raises(RoundConfigError, match="warm-up"):
        dataclasses.replace(RoundConfig().feedback, warmup_steps=-1)
    config = raft_round(learning_rate=1e-4, warmup_steps=4)
    refl = refl_config(config, 0, guard=False)
    assert refl.lr_warmup_steps == 4
    assert dpo_config(dataclasses.replace(config, objective="dpo"), 0).lr_warmup_steps == 4
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    rates = [set_learning_rate(optimizer, refl, step) for step in range(6)]
    assert rates == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4])
    older = RoundConfig().to_dict()
    del older["feedback"]["warmup_steps"]
    assert RoundConfig.from_dict(older).feedback.warmup_steps == 0


def test_the_ema_decay_is_validated_and_refused_where_nothing_would_read_it():
    with pytest.raises(RoundConfigError, match="EMA decay"):
        dataclasses.replace(RoundConfig().feedback, ema_decay=1.0)
    with pytest.raises(RoundConfigError, match="Diffusion-DPO keeps no weight average"):
        RoundConfig(objective="dpo", feedback=dataclasses.replace(RoundConfig().feedback, ema_decay=0.99))
    older = RoundConfig().to_dict()
    del older["feedback"]["ema_decay"]
    assert RoundConfig.from_dict(older).feedback.ema_decay is None


def test_the_gate_closes_before_a_single_candidate_is_drawn(tmp_path, tiny_base):
    round_config = raft_round(candidates=2, gate="require")
    data, result = _iteration_on_d0(tmp_path, tiny_base, round_config)
    # Without rankings of the model's own samples the gate has nothing to measure: "require" refuses.
    assert result.finetuned is None and "gate" in result.gate_closed
    calls: list[int] = []
    with pytest.raises(GateClosed):
        finetune(
            round_config,
            family="world",
            base_path=str(tiny_base),
            chain=[],
            rewards={"spatial": result.rewards["spatial"].path},
            prompts=[p.prompt for p in data.prompts],
            validation_prompts=[],
            output_dir=tmp_path / "refused",
            iteration=0,
            categories={p.prompt: "spatial" for p in data.prompts},
            progress=lambda step, total, m: calls.append(step),
            reward_metrics={
                "spatial": {
                    "own_accuracy": 0.5,
                    "own_accuracy_ci_low": 0.4,
                    "own_accuracy_ci_high": 0.6,
                    "own_pairs": 80,
                }
            },
        )
    assert calls == [] and not (tmp_path / "refused").exists()


def test_the_loop_command_line_sets_the_objective_its_candidates_and_the_feedback_prompts(tmp_path):
    from training.ml.loop import build_parser, config_from_args

    args = build_parser().parse_args(
        ["--out", str(tmp_path), "--objective", "raft", "--raft-candidates", "6"]
        + ["--raft-caption-dropout", "0.2", "--feedback-prompts-per-category", "40", "--raft-guidance", "1"]
        + ["--raft-noise-floor", "0.5"]
    )
    round_config = config_from_args(args).round
    assert (round_config.objective, round_config.raft) == ("raft", RaftStageConfig(6, 0.2, 1.0, 0.5))
    assert round_config.feedback.prompts_per_category == 40
    assert round_config.feedback.ema_decay is None
    with_ema = build_parser().parse_args(
        ["--out", str(tmp_path), "--objective", "raft", "--ema-decay", "0.99"]
    )
    assert config_from_args(with_ema).round.feedback.ema_decay == 0.99
