"""Diffusion-DPO as a round objective: the configuration, the pairs it trains on, and the loop's iteration."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from tests.ml.test_refl_loop import tiny_config, tiny_round
from tests.ml.test_refl_world import _one_thread  # noqa: F401
from training.ml.algorithm1.config import DPOStageConfig, RoundConfig, RoundConfigError
from training.ml.algorithm1.gate import split_own_pairs
from training.ml.algorithm1.steps import NoDPOPairs, dpo_config, dpo_pairs, finetune_dpo
from training.ml.loop import loop_prompts, rank_gallery, run_iteration, run_loop
from training.ml.reward.data import PairRecord


def record(pair_id: int, prompt: str, winner: int, loser: int, **fields) -> PairRecord:
    values = dict(
        pair_id=pair_id,
        prompt_id=int(hashlib.sha256(prompt.encode()).hexdigest()[:6], 16),
        prompt=prompt,
        category="spatial",
        subcategory=None,
        split=None,
        winner_id=winner,
        winner_sha256=f"{winner}",
        winner_path=f"{winner}.png",
        loser_id=loser,
        loser_sha256=f"{loser}",
        loser_path=f"{loser}.png",
    )
    values.update(fields)
    return PairRecord(**values)


def dpo_round(**dpo) -> RoundConfig:
    return RoundConfig(objective="dpo", dpo=DPOStageConfig(**dpo))


# ------------------------------------------------------------------------------------ configuration


def test_the_objective_is_validated_and_rounds_stored_before_it_load_as_refl():
    assert RoundConfig().objective == "refl"
    with pytest.raises(RoundConfigError, match="objective"):
        RoundConfig(objective="ppo")
    old = RoundConfig().to_dict()
    del old["objective"], old["dpo"]
    assert RoundConfig.from_dict(old) == RoundConfig()
    stored = dpo_round(beta=250.0, pair_source="own", ties="down_weight").to_dict()
    assert RoundConfig.from_dict(json.loads(json.dumps(stored))) == dpo_round(
        beta=250.0, pair_source="own", ties="down_weight"
    )
    for bad, message in (
        ({"beta": 0.0}, "beta"),
        ({"beta": float("inf")}, "beta"),
        ({"pair_source": "model"}, "pair source"),
        ({"ties": "half"}, "ties"),
        ({"tie_weight": 0.0}, "tie weight"),
        ({"heldout_share": 1.0}, "held-out share"),
    ):
        with pytest.raises(RoundConfigError, match=message):
            DPOStageConfig(**bad)
    stored["dpo"]["no_such_setting"] = 1
    with pytest.raises(RoundConfigError, match="no_such_setting"):
        RoundConfig.from_dict(stored)


def test_dpo_config_takes_beta_and_ties_from_the_round_and_the_budget_from_feedback():
    config = dataclasses.replace(
        dpo_round(beta=750.0, ties="down_weight", tie_weight=0.25, pair_weights=True),
        seed=3,
        feedback=dataclasses.replace(
            RoundConfig().feedback,
            steps=17,
            learning_rate=3e-5,
            batch_size=4,
            weight_decay=0.02,
            lora=False,
            lora_rank=8,
        ),
    )
    dpo = dpo_config(config, iteration=2)
    assert (dpo.beta, dpo.ties, dpo.tie_weight, dpo.use_pair_weights) == (750.0, "down_weight", 0.25, True)
    assert (dpo.max_steps, dpo.learning_rate, dpo.batch_size, dpo.weight_decay) == (17, 3e-5, 4, 0.02)
    assert (dpo.train_mode, dpo.lora.rank, dpo.seed) == ("full", 8, 5)


# ------------------------------------------------------------------------------------ the pairs


def _d_k() -> list[PairRecord]:
    """Gallery images 1..4, the current model's samples 10 and 11, on prompts of every split."""
    return [
        record(0, "gallery only", 1, 2),
        record(1, "pushed", 10, 1),  # the experts ranked p_k's sample above a gallery image
        record(2, "pushed", 3, 11),
        record(3, "pushed", 10, 11),
        record(4, "pushed", 3, 4),
        record(5, "provisional", 11, 2, source="model"),  # a reward score placed the sample
        record(6, "a val prompt", 1, 3, split="val"),
        record(7, "a val prompt", 10, 3, split="val"),
        record(8, "a test prompt", 1, 4, split="test"),
        record(9, "tied", 2, 4, label=0.5),
    ]


def ids(records) -> list[int]:
    return sorted(r.pair_id for r in records)


def test_dpo_trains_on_expert_pairs_chosen_by_source_and_never_on_model_or_test_pairs():
    own = {10, 11}
    train, held = dpo_pairs(dpo_round(pair_source="both", heldout_share=0.0), _d_k(), own, 0)
    # Model-source pairs (a reward model's placement) and the test split never train; val is held out.
    assert ids(train) == [0, 1, 2, 3, 4, 9] and ids(held) == [6, 7]
    train, held = dpo_pairs(dpo_round(pair_source="own", heldout_share=0.0), _d_k(), own, 0)
    assert ids(train) == [1, 2, 3] and ids(held) == [7]
    train, held = dpo_pairs(dpo_round(pair_source="gallery", heldout_share=0.0), _d_k(), own, 0)
    assert ids(train) == [0, 4, 9] and ids(held) == [6]


def test_a_share_of_unsplit_prompts_is_held_out_by_text_and_one_always_trains():
    records = [record(i, f"prompt {i // 3}", 2 * i, 2 * i + 1) for i in range(60)]  # 20 prompts
    config = dpo_round(heldout_share=0.25)
    train, held = dpo_pairs(config, records, set(), 0)
    held_prompts = {r.prompt for r in held}
    assert len(held_prompts) == 5 and held_prompts.isdisjoint({r.prompt for r in train})
    assert len(train) + len(held) == 60
    # Deterministic, independent of the records' order, and another iteration draws another share.
    assert dpo_pairs(config, records[::-1], set(), 0)[1] == held[::-1]
    assert {r.prompt for r in dpo_pairs(config, records, set(), 1)[1]} != held_prompts
    one_prompt = records[:3]
    assert ids(dpo_pairs(dpo_round(heldout_share=0.9), one_prompt, set(), 0)[0]) == [0, 1, 2]


def test_own_pairs_without_rankings_of_the_models_samples_are_refused_with_the_reason():
    with pytest.raises(NoDPOPairs, match="push-back rankings"):
        dpo_pairs(dpo_round(pair_source="own"), _d_k(), set(), 0)
    ties_only = [record(0, "tied", 1, 2, label=0.5)]
    with pytest.raises(NoDPOPairs):
        dpo_pairs(dpo_round(heldout_share=0.0), ties_only, set(), 0)
    train, _ = dpo_pairs(dpo_round(heldout_share=0.0, ties="down_weight"), ties_only, set(), 0)
    assert ids(train) == [0]


def test_the_gate_never_measures_reward_models_on_model_source_pairs():
    own = {10, 11}
    records = [record(0, "p", 10, 11, source="model"), record(1, "q", 10, 11)]
    train, gate = split_own_pairs(records, own, share=1.0, salt="s")
    assert ids(gate) == [1] and ids(train) == [0]


# ------------------------------------------------------------------------------------ the loop


def _weights(directory: Path) -> dict[str, str]:
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.glob("*.safetensors"))
    }


def test_a_dpo_iteration_trains_reward_models_but_its_weights_do_not_depend_on_them(tmp_path, tiny_base):
    base = tiny_round(steps=3, guard_every=2, lora=True, learning_rate=1e-3)
    round_config = dataclasses.replace(
        base, objective="dpo", dpo=DPOStageConfig(beta=500.0, heldout_share=0.34)
    )
    config = tiny_config(tmp_path / "loop", tiny_base, round=round_config)
    data = rank_gallery(config, loop_prompts(config)[0], tmp_path / "d0")
    records = data.records()
    result = run_iteration(
        round_config,
        iteration=0,
        records=records,
        image_loader=data.loader(),
        categories=["spatial"],
        base_path=str(tiny_base),
        chain=[],
        train_prompts={},
        validation_prompts={},
        output_dir=tmp_path / "it0",
    )
    assert set(result.rewards) == {"spatial"} and result.gate_closed is None
    info = result.finetuned.checkpoint
    assert info.kind == "dpo" and info.metrics["objective"] == "dpo" and info.metrics["steps"] == 3
    # 3 prompts: one held out (share 0.34), its 15 pairs minus the panel's ties measure the accuracy.
    assert 0 < info.metrics["heldout_pairs"] <= 15 and info.metrics["pairs"] <= 30
    curve = result.finetuned.curve
    assert [c["step"] for c in curve] == [0, 1, 2, 3]
    assert curve[0]["val/implicit_acc"] == 0.5  # p_0 is its own reference
    assert {"val/implicit_acc", "val/loss"} <= set(curve[2]) and "val/implicit_acc" not in curve[1]
    assert info.metrics["heldout_implicit_acc"] == curve[-1]["val/implicit_acc"]
    # The same step on the same pairs, with no reward model anywhere, trains byte-identical weights.
    train, held = dpo_pairs(round_config, records, set(), 0)
    alone = finetune_dpo(
        round_config,
        family="world",
        base_path=str(tiny_base),
        chain=[],
        pairs=train,
        loader=data.loader(),
        output_dir=tmp_path / "alone",
        iteration=0,
        heldout_pairs=held,
    )
    assert _weights(Path(alone.checkpoint.path)) == _weights(Path(info.path))
    assert alone.curve == curve


def test_online_dpo_trains_the_second_iteration_on_the_experts_rankings_of_the_models_samples(
    tmp_path, tiny_base
):
    base = tiny_round(steps=2, guard_every=0, lora=True, learning_rate=1e-3)
    round_config = dataclasses.replace(
        base,
        objective="dpo",
        dpo=DPOStageConfig(beta=500.0, pair_source="own", heldout_share=0.0),
        push_back=dataclasses.replace(base.push_back, share_of_prompts=1.0, samples_per_prompt=2),
    )
    # Iteration 0's own pairs: groups of p_0's samples ranked by the panel; iteration 1's also the
    # pushed groups holding p_1's expansion samples.
    config = tiny_config(
        tmp_path / "loop",
        tiny_base,
        iterations=2,
        own_groups_per_category=2,
        own_group_size=3,
        round=round_config,
    )
    result = run_loop(config)
    first, second = result.metrics
    assert first["objective"] == second["objective"] == "dpo"
    assert len(result.refl_checkpoints) == 2
    for path in result.refl_checkpoints:
        assert json.loads((Path(path) / "checkpoint.json").read_text())["kind"] == "dpo"
    # Iteration 0: the own groups' C(3, 2) pairs less ties; iteration 1: those of p_1's fresh own groups
    # plus the expert pairs touching p_1's two pushed samples in each of the 3 groups (13 each, less ties).
    assert first["refl"]["pairs"] <= 2 * 3 < 3 * 6 < second["refl"]["pairs"]


def test_a_stopped_dpo_step_resumes_from_its_last_checkpoint_and_ends_where_an_unbroken_one_does(
    tmp_path, tiny_base
):
    from tests.ml.test_dpo import RenderedPairs

    round_config = dataclasses.replace(
        tiny_round(steps=4, guard_every=0, lora=True, learning_rate=1e-2), objective="dpo"
    )
    data = RenderedPairs(6)
    common = dict(
        family="world",
        base_path=str(tiny_base),
        chain=[],
        pairs=data.pairs[:4],
        loader=data,
        iteration=0,
        heldout_pairs=data.pairs[4:],
        dpo=dataclasses.replace(dpo_config(round_config, 0), beta=500.0),
    )
    unbroken = finetune_dpo(round_config, output_dir=tmp_path / "unbroken", **common)
    # A cancelled stage: the progress callback says stop after step 2; the trainer saves where it stopped.
    stopped = finetune_dpo(
        round_config, output_dir=tmp_path / "resumed", progress=lambda step, total, m: step < 2, **common
    )
    assert stopped.checkpoint.stopped_early and stopped.checkpoint.metrics["steps"] == 2
    resumed = finetune_dpo(round_config, output_dir=tmp_path / "resumed", **common)
    assert resumed.checkpoint.metrics["steps"] == 4 and resumed.curve[0]["step"] == 2
    assert _weights(Path(resumed.checkpoint.path)) == _weights(Path(unbroken.checkpoint.path))
    assert resumed.checkpoint.metrics["heldout"] == unbroken.checkpoint.metrics["heldout"]
    # Other pairs (more were ranked since the first attempt): the old state is not resumed, a fresh run is.
    fresh = finetune_dpo(round_config, output_dir=tmp_path / "resumed", **{**common, "pairs": data.pairs[:3]})
    assert fresh.curve[0]["step"] == 0 and fresh.checkpoint.metrics["steps"] == 4
