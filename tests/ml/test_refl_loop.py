"""Algorithm 1 end to end at toy size: gallery → rewards → ReFL → sampling → insertion → bigger D."""

from __future__ import annotations

import dataclasses
import json

import pytest

# One torch thread for every test here (the fixture is autouse) and the small world model config.
from tests.ml.test_refl_world import SMALL, _one_thread  # noqa: F401
from training.ml.algorithm1.config import RoundConfig
from training.ml.algorithm1.gate import accuracy_dropped
from training.ml.algorithm1.steps import refl_config
from training.ml.loop import LoopConfig, loop_prompts, loop_round_config, main, rank_gallery, run_loop


def tiny_round(**feedback) -> RoundConfig:
    base = loop_round_config()
    return dataclasses.replace(
        base,
        reward=dataclasses.replace(base.reward, backbone="scratch", hidden_size=32, layers=1, epochs=1),
        feedback=dataclasses.replace(
            base.feedback,
            **{
                "steps": 2,
                "sampling_steps": 3,
                "late_steps": 2,
                "guard_every": 1,
                "pretrain_images": 4,
                **feedback,
            },
        ),
    )


def tiny_config(out, base, **overrides) -> LoopConfig:
    values = dict(
        output_dir=str(out),
        iterations=1,
        base_model_path=str(base),
        categories=("spatial",),
        prompts_per_category=3,
        val_prompts_per_subcategory=1,
        round=tiny_round(),
    )
    values.update(overrides)
    return LoopConfig(**values)


def test_one_iteration_inserts_samples_keeps_human_order_and_writes_checkpoints(tmp_path, tiny_base):
    out = tmp_path / "loop"
    config = tiny_config(out, tiny_base)
    gallery_only = rank_gallery(config, loop_prompts(config)[0], tmp_path / "gallery_only")
    human_before = {p.prompt_id: p.ordering for p in gallery_only.prompts}
    stages = []
    result = run_loop(tiny_config(out, tiny_base), lambda stage, step, total, m: stages.append(stage))

    rankings = json.loads((out / "iter_1" / "rankings.json").read_text())
    assert len(rankings["rankings"]) == 3
    for entry in rankings["rankings"]:
        flat = [i for group in entry["ordering"] for i in group]
        human_ids = set(entry["human"])
        human = [sorted(set(group) & human_ids) for group in entry["ordering"] if set(group) & human_ids]
        # The simulated experts' consensus (its tie groups included, whose inner order means nothing) is
        # unchanged; only model samples were slotted into it.
        assert human == [sorted(group) for group in human_before[entry["prompt_id"]]]
        assert len(flat) == 6 + 1
    sources = {img["id"]: img["source"] for img in rankings["images"]}
    assert sum(s == "model" for s in sources.values()) == 3

    before = sum(1 for _ in (out / "iter_0" / "pairs.jsonl").open())
    after = sum(1 for _ in (out / "iter_1" / "pairs.jsonl").open())
    # Each prompt gains one ranked image: C(7, 2) - C(6, 2) = 6 new pairs per prompt.
    assert (before, after) == (3 * 15, 3 * 21)
    model_pairs = [json.loads(line) for line in (out / "iter_1" / "pairs.jsonl").open()]
    assert sum(p["source"] == "model" for p in model_pairs) == 3 * 6

    metrics = json.loads((out / "iter_0" / "metrics.json").read_text())
    assert metrics["dataset_after"]["pairs"] == after
    assert metrics["expansion"]["inserted"] == 3
    assert [c["step"] for c in metrics["refl_curve"]] == [1, 2]
    assert "val/heldout" in metrics["refl_curve"][0]
    assert (result.refl_checkpoints[0] / "checkpoint.json").is_file()
    assert (result.reward_checkpoints[0]["spatial"] / "checkpoint.json").is_file()
    assert {"iter0/reward/spatial", "iter0/refl", "iter0/expand"} <= set(stages)


def test_validation_prompts_never_overlap_the_ranked_prompts(tmp_path, tiny_base):
    config = tiny_config(tmp_path, tiny_base, categories=("attribute_binding", "spatial", "non_spatial"))
    data, validation = loop_prompts(config)
    assert len(data) == 9 and len(validation) == 5
    assert not {p for p, _ in data} & {p for p, _ in validation}


def test_config_refuses_a_diffusers_base_and_empty_categories(tmp_path, tiny_base):
    with pytest.raises(ValueError, match="synthetic"):
        tiny_config(tmp_path, tiny_base, round=dataclasses.replace(tiny_round(), base_model=str(tmp_path)))
    with pytest.raises(ValueError, match="categories"):
        tiny_config(tmp_path, tiny_base, categories=())


def test_a_panel_that_may_tie_keeps_pictures_its_experts_see_alike_as_one_consensus_group(tmp_path):
    from training.ml.loop import RankedData, expert_ranking
    from training.ml.world.gallery import GALLERY_GENERATORS

    prompt = "a red circle and a yellow square"
    names = ("flux", "sd3", "sdxl", "sd15", "rpg", "instancediffusion")
    data = RankedData(tmp_path / "d")
    # Oracle scores 1, 1, 1, 0.5, 1, 0.25 (tests/ml/test_world_gallery.py).
    ids = [
        data.add_image(GALLERY_GENERATORS[n].generate_array(prompt, i, 32), "gallery", 0)
        for i, n in enumerate(names)
    ]
    strict = LoopConfig(output_dir=str(tmp_path), consensus_method="kemeny")
    # Experts who never tie order the four right pictures by their noise: 4-1 splits become strict pairs.
    assert expert_ranking(strict, data, prompt, ids) == [[0], [4, 1, 2], [3], [5]]
    tying = dataclasses.replace(strict, expert_tie_threshold=0.1)
    ordering = expert_ranking(tying, data, prompt, ids)
    assert sorted(ordering[0]) == [0, 1, 2, 4] and ordering[1:] == [[3], [5]]
    with pytest.raises(ValueError, match="expert_tie_threshold"):
        dataclasses.replace(strict, expert_tie_threshold=-0.1)


def test_command_line_runs_the_loop_from_a_config_file(tmp_path, tiny_base, capsys):
    from training.ml.common import config_to_dict

    config = config_to_dict(tiny_config(tmp_path / "ignored", tiny_base))
    path = tmp_path / "loop.json"
    path.write_text(json.dumps(config))
    assert main(["--out", str(tmp_path / "cli"), "--config", str(path), "--refl-steps", "1"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["iteration"] == 0 and line["inserted"] == 3
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert saved["round"]["feedback"]["steps"] == 1 and saved["output_dir"] == str(tmp_path / "cli")


def test_refl_command_line_finetunes_the_world_model_with_the_oracle_guard(tmp_path, tiny_base, capsys):
    from training.ml.common import config_to_dict
    from training.ml.refl.cli import main as refl_main
    from training.ml.refl.stage import ReFLStageConfig, RewardSource, apply_refl_checkpoint
    from training.ml.refl.world_adapter import load_world_adapter
    from training.ml.reward.checkpoint import save_reward_model
    from training.ml.reward.config import RewardModelConfig
    from training.ml.reward.model import build_reward_model

    reward = save_reward_model(build_reward_model(RewardModelConfig.tiny("spatial"), seed=0), tmp_path / "rm")
    refl = refl_config(tiny_round(), 0, guard=True)
    stage = ReFLStageConfig(
        refl=refl,
        output_dir=str(tmp_path / "unused"),
        family="world",
        base_model_path=str(tiny_base),
        rewards=(RewardSource("spatial", str(reward)),),
    )
    (tmp_path / "stage.json").write_text(json.dumps(config_to_dict(stage)))
    (tmp_path / "train.txt").write_text("a red circle to the left of a blue square\n")
    (tmp_path / "val.txt").write_text("a green square above a yellow circle\n")
    argv = ["finetune", "--config", str(tmp_path / "stage.json"), "--prompts", str(tmp_path / "train.txt")]
    argv += [
        "--validation-prompts",
        str(tmp_path / "val.txt"),
        "--heldout",
        "oracle",
        "--pretrain-renders",
        "4",
    ]
    assert refl_main([*argv, "--output", str(tmp_path / "refl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    # The guard ran (step 0 plus every step) and the chosen checkpoint loads back into a fresh base model.
    assert [e["step"] for e in summary["guard_history"]] == [0, 1, 2]
    assert summary["checkpoint"] == str(tmp_path / "refl" / "best")
    apply_refl_checkpoint(load_world_adapter(tiny_base), summary["checkpoint"])


def test_base_in_gallery_and_expert_pushback_rank_the_models_samples_by_the_panel(tmp_path, tiny_base):
    from rankmath.aggregation import aggregate, consensus_tie_groups
    from training.ml.reward.data import FolderImageLoader
    from training.ml.world.annotators import default_panel

    out = tmp_path / "loop"
    round_config = tiny_round()
    round_config = dataclasses.replace(
        round_config, push_back=dataclasses.replace(round_config.push_back, share_of_prompts=1.0)
    )
    config = tiny_config(out, tiny_base, base_in_gallery=True, base_samples=2, round=round_config)
    metrics = run_loop(config).metrics[0]
    load = FolderImageLoader(out)
    panel = default_panel(config.seed)[: config.annotators]

    def consensus(images, prompt, ids):
        # Recomputed from the stored PNGs, independently of the loop's own ranking code.
        arrays = [load(images[i]["path"], images[i]["sha256"]) for i in ids]
        rankings = [[[ids[j]] for j in annotator.rank(prompt, arrays)] for annotator in panel]
        result = aggregate(config.consensus_method, rankings)
        # Near-even splits of the panel are ties (tie_margin), as the loop keeps them.
        return [list(g) for g in consensus_tie_groups(result, rankings, margin=config.tie_margin)]

    d0 = json.loads((out / "iter_0" / "rankings.json").read_text())
    images = {img["id"]: img for img in d0["images"]}
    assert sum(img["source"] == "gallery:base" for img in images.values()) == 3 * 2
    for entry in d0["rankings"]:
        flat = [i for group in entry["ordering"] for i in group]
        assert len(flat) == 6 + 2 and sorted(entry["human"]) == sorted(flat)
        assert sum(images[i]["source"] == "gallery:base" for i in flat) == 2
        assert entry["ordering"] == consensus(images, entry["prompt"], sorted(flat))
    pairs0 = [json.loads(line) for line in (out / "iter_0" / "pairs.jsonl").open()]
    base_ids = {i for i, img in images.items() if img["source"] == "gallery:base"}
    # C(8, 2) expert-ranked pairs per group, p_0's samples among them.
    assert len(pairs0) == 3 * 28 and all(p["source"] == "human" for p in pairs0)
    assert sum(p["winner_id"] in base_ids or p["loser_id"] in base_ids for p in pairs0) == 3 * (28 - 15)

    d1 = json.loads((out / "iter_1" / "rankings.json").read_text())
    images = {img["id"]: img for img in d1["images"]}
    model_ids = {i for i, img in images.items() if img["source"] == "model"}
    assert len(model_ids) == 3
    for entry in d1["rankings"]:
        flat = [i for group in entry["ordering"] for i in group]
        assert len(flat) == 9 and len(model_ids & set(flat)) == 1
        # After push-back the panel's consensus over all nine images is the ranking, the sample included.
        assert entry["ordering"] == consensus(images, entry["prompt"], sorted(flat))
        assert set(entry["human"]) == set(flat)
    pairs1 = [json.loads(line) for line in (out / "iter_1" / "pairs.jsonl").open()]
    # The panel ranked every image of a pushed group, the sample too: all its pairs are expert pairs (as
    # in the app, where a ranked pushed task's consensus gives human-source pairs).
    assert len(pairs1) == 3 * 36 and all(p["source"] == "human" for p in pairs1)
    assert 0.0 <= metrics["expansion"]["expert_above_some_human"] <= 1.0


def test_own_sample_groups_are_ranked_by_the_panel_and_the_gate_decides_on_them(tmp_path, tiny_base):
    out = tmp_path / "loop"
    round_config = tiny_round()
    round_config = dataclasses.replace(
        round_config, feedback=dataclasses.replace(round_config.feedback, gate="require")
    )
    # Strict consensus (no tie margin): the untrained tiny base draws many oracle ties, and this test is
    # about the gate's held-out pairs, which ties would leave empty.
    config = tiny_config(
        out,
        tiny_base,
        iterations=2,
        own_groups_per_category=2,
        own_group_size=3,
        tie_margin=0.0,
        round=round_config,
    )
    all_metrics = run_loop(config).metrics
    metrics = all_metrics[0]

    d0 = json.loads((out / "iter_0" / "rankings.json").read_text())
    own_groups = [r for r in d0["rankings"] if r["group"] == "own"]
    sources = {img["id"]: img["source"] for img in d0["images"]}
    assert len(own_groups) == 2
    for group in own_groups:
        flat = [i for g in group["ordering"] for i in g]
        assert len(flat) == 3 and {sources[i] for i in flat} == {"own:0"}
    # One of the two own-sample prompts is held out (gate_share 0.5): its C(3, 2) pairs, minus expert ties.
    spatial = metrics["rewards"]["spatial"]
    assert 1 <= spatial["own_pairs"] <= 3
    assert (
        0.0
        <= spatial["own_accuracy_ci_low"]
        <= spatial["own_accuracy"]
        <= spatial["own_accuracy_ci_high"]
        <= 1.0
    )
    # The decision follows the rule: ReFL ran if and only if the lower bound is above chance.
    closed = metrics["refl"]["checkpoint"] is None
    assert closed == (spatial["own_accuracy_ci_low"] <= 0.5)
    if closed:
        assert "spatial" in metrics["refl"]["gate_closed"]
    # Expansion touched only the gallery groups.
    d1 = json.loads((out / "iter_1" / "rankings.json").read_text())
    assert all(len([i for g in r["ordering"] for i in g]) == 3 for r in d1["rankings"] if r["group"] == "own")
    # Iteration 1: R_0 is measured on p_1's fresh held-out groups beside what it scored on p_0's, and the
    # gate's drop rule decides on exactly those figures.
    # The loop's oracle reference and the same figures read back from the saved folder agree: the folder
    # holds what the reward stage saw.
    from training.ml.loop import reference_from_dir

    assert reference_from_dir(out, 0)["spatial"] == spatial["reference"]
    assert spatial["reference"]["own_decidable_pairs"] <= spatial["own_pairs"]
    second = all_metrics[1]["rewards"]["spatial"]
    assert second["previous_own_accuracy"] == spatial["own_accuracy"]
    if second["own_pairs"]:
        assert 0.0 <= second["fresh_accuracy_ci_low"] <= second["fresh_accuracy"] <= 1.0
        before = (spatial["own_accuracy"], spatial["own_accuracy_ci_low"], spatial["own_accuracy_ci_high"])
        after = (second["fresh_accuracy"], second["fresh_accuracy_ci_low"], second["fresh_accuracy_ci_high"])
        gate_closed = all_metrics[1]["refl"].get("gate_closed") or ""
        assert accuracy_dropped(before, after) == ("significant drop" in gate_closed)


def test_oracle_reference_reads_the_gate_and_gallery_pairs_against_the_oracle(tmp_path):
    """Hand-checked: in each group a correct render c1, a blank canvas and a second correct render c2,
    ranked [c1, blank, c2] → pairs c1>blank (oracle right), c1>c2 (an exact oracle tie the panel ordered),
    blank>c2 (oracle wrong): ceiling (1 + 0.5 + 0) / 3 = 0.5, a third of the pairs oracle ties."""
    import numpy as np
    import torch

    from training.ml.loop import RankedData, RankedPrompt, oracle_reference
    from training.ml.reward.checkpoint import save_reward_model
    from training.ml.reward.config import RewardModelConfig
    from training.ml.reward.data import hash_split
    from training.ml.reward.model import build_reward_model
    from training.ml.world.pretrain import draw_batch, training_prompts

    round_config = loop_round_config()
    share = round_config.reward.validation_share
    pool = training_prompts()["spatial"]
    val_prompt = next(p for p in pool if hash_split(p, (1 - share, share, 0.0)) == "val")
    train_prompt = next(p for p in pool if hash_split(p, (1 - share, share, 0.0)) == "train")
    data = RankedData(tmp_path)

    def group(prompt: str, source: str, kind: str) -> None:
        renders, _ = draw_batch(np.random.default_rng(len(data.prompts)), 2, {"spatial": [prompt]}, 0.0)
        ids = [
            data.add_image(renders[0], source, 0),
            data.add_image(torch.full((3, 32, 32), 0.5), source, 0),
            data.add_image(renders[1], source, 0),
        ]
        data.prompts.append(
            RankedPrompt(len(data.prompts), prompt, "spatial", [[i] for i in ids], tuple(ids), kind)
        )

    group(val_prompt, "gallery:flux", "gallery")  # validation split: counted
    group(train_prompt, "gallery:flux", "gallery")  # training split: not
    # Two own groups of the validation prompt: one is held out for the gate (gate_share 0.5); the other
    # trains, lands in the validation split and must not count as gallery.
    group(val_prompt, "own:0", "own")
    group(val_prompt, "own:0", "own")
    own = {i.id for i in data.images if i.source == "own:0"}
    gallery = {i.id for i in data.images if i.source.startswith("gallery:")}
    reward = save_reward_model(build_reward_model(RewardModelConfig.tiny("spatial"), seed=0), tmp_path / "rm")

    ref = oracle_reference(
        round_config,
        "spatial",
        data.records(),
        own_images=own,
        gallery_images=gallery,
        image_loader=data.loader(),
        iteration=0,
        reward_path=reward,
    )
    for name in ("own", "gallery"):
        assert ref[f"{name}_ceiling"] == pytest.approx(0.5)
        assert ref[f"{name}_oracle_ties"] == pytest.approx(1 / 3)
        assert ref[f"{name}_decidable_pairs"] == 2
        assert 0.0 <= ref[f"{name}_decidable_accuracy"] <= 1.0
    assert ref["gallery_pairs"] == 3
    # The tie pair is worth 0 or 1 to the reward model, the two decidable ones as measured.
    tie_pair = 3 * ref["gallery_accuracy"] - 2 * ref["gallery_decidable_accuracy"]
    assert min(abs(tie_pair - v) for v in (0.0, 0.5, 1.0)) < 1e-9
