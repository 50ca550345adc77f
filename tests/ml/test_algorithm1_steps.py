"""Algorithm 1's steps: one configuration read everywhere, LoRA chaining, deterministic prompt choice."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from tests.ml.test_refl_world import SMALL, _one_thread  # noqa: F401
from training.ml.algorithm1.config import (
    DPOStageConfig,
    FeedbackStageConfig,
    PushBackConfig,
    RewardStageConfig,
    RoundConfig,
    RoundConfigError,
)
from training.ml.algorithm1.steps import (
    choose_prompts,
    expansion_prompts,
    finetune,
    load_policy,
    merge_lora,
    pretrain_data,
    prompt_categories,
    push_back_prompts,
    refl_config,
    reward_model_config,
    reward_train_config,
    routed_reward,
)
from training.ml.refl.world_adapter import WorldAdapter
from training.ml.reward.checkpoint import save_reward_model
from training.ml.reward.config import RewardModelConfig
from training.ml.reward.model import build_reward_model
from training.ml.world.model import WorldDiffusionModel

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red circle to the left of a blue square", "a green square above a yellow circle"]


@pytest.fixture(scope="module")
def tiny_reward(tmp_path_factory):
    path = tmp_path_factory.mktemp("rm")
    return save_reward_model(build_reward_model(RewardModelConfig.tiny("spatial"), seed=0), path / "spatial")


def tiny_round(**feedback) -> RoundConfig:
    values = dict(
        steps=2, sampling_steps=3, late_steps=2, guard_every=1, pretrain_images=4, guidance_scale=1.0
    )
    values.update(feedback)
    return RoundConfig(
        reward=RewardStageConfig(backbone="scratch", hidden_size=32, layers=1, epochs=1),
        feedback=FeedbackStageConfig(**values),
    )


def test_every_round_setting_is_read_by_the_code_that_trains():
    # A setting nothing reads lies to the admin who sets it: each field must be used by a step, a stage or
    # the loop (attribute access on the config), outside the configuration module itself.
    sources = "\n".join(
        (ROOT / path).read_text()
        for path in ("training/ml/algorithm1/steps.py", "training/stages.py", "training/ml/loop.py")
    )
    unread = []
    for section in (RewardStageConfig, FeedbackStageConfig, PushBackConfig, DPOStageConfig, RoundConfig):
        for field in dataclasses.fields(section):
            if field.name in ("reward", "feedback", "push_back", "dpo"):
                continue
            if not re.search(rf"\.{field.name}\b", sources):
                unread.append(f"{section.__name__}.{field.name}")
    assert unread == []


def test_refl_config_carries_the_round_settings_hand_checked():
    config = RoundConfig(
        seed=7,
        feedback=FeedbackStageConfig(
            steps=12,
            learning_rate=2e-5,
            sampling_steps=30,
            late_steps=6,
            guidance_scale=2.5,
            reward_scale=0.5,
            batch_size=3,
            weight_decay=0.01,
            lora=False,
            pretrain_loss_weight=0.25,
            guard_every=4,
            guard_patience=2,
            guard_rule="best_mean",
            guard_seeds=2,
        ),
    )
    refl = refl_config(config, iteration=2, guard=True)
    assert (refl.max_steps, refl.learning_rate, refl.num_inference_steps, refl.late_steps) == (
        12,
        2e-5,
        30,
        6,
    )
    assert (refl.guidance_scale, refl.reward_scale, refl.batch_size, refl.weight_decay) == (2.5, 0.5, 3, 0.01)
    assert (refl.train_mode, refl.pretrain_loss_weight, refl.seed) == ("full", 0.25, 9)
    assert (refl.guard.every, refl.guard.patience, refl.guard.restore_best_at_end) == (4, 2, True)
    assert (refl.guard.rule, refl.guard.seeds) == ("best_mean", 2)
    assert refl_config(config, iteration=0, guard=False).guard.every == 0
    no_guard = dataclasses.replace(config, feedback=dataclasses.replace(config.feedback, guard_every=0))
    assert refl_config(no_guard, iteration=0, guard=True).guard.every == 0


def test_reward_config_uses_a_named_blip_folder_or_the_rounds_small_backbone(tmp_path):
    config = RoundConfig(
        reward=RewardStageConfig(backbone="scratch", epochs=3, hidden_size=64, layers=2, patch_size=4)
    )
    scratch = reward_train_config(config, "spatial", tmp_path, iteration=1)
    assert scratch.model.pretrained_path is None and scratch.model.freeze_fraction == 0.0
    assert (scratch.model.vision.hidden_size, scratch.model.vision.num_hidden_layers) == (64, 2)
    assert (scratch.model.vision.patch_size, scratch.epochs, scratch.seed) == (4, 3, 1)
    assert scratch.split_fractions == (0.9, 0.1, 0.0)
    # A diffusers round with a pretrained backbone uses the folder the worker names.
    sdxl = dataclasses.replace(config, base_model="/models/sdxl", reward=RewardStageConfig())
    blip = reward_train_config(sdxl, "spatial", tmp_path, iteration=0, pretrained_path="/models/blip")
    assert blip.model.pretrained_path == "/models/blip" and blip.model.freeze_fraction == 0.7


def test_old_rounds_with_a_retired_setting_still_load_and_unknown_ones_are_refused():
    stored = RoundConfig().to_dict()
    stored["reward"]["include_x0_predictions"] = True
    assert RoundConfig.from_dict(stored) == RoundConfig()
    stored["feedback"]["no_such_setting"] = 1
    with pytest.raises(RoundConfigError, match="no_such_setting"):
        RoundConfig.from_dict(stored)


def test_prompt_choices_do_not_depend_on_list_order_and_respect_caps():
    pool = {"spatial": [f"p{i}" for i in range(10)], "non_spatial": [f"q{i}" for i in range(3)]}
    shuffled = {k: list(reversed(v)) for k, v in pool.items()}
    assert choose_prompts(pool, 4, "s") == choose_prompts(shuffled, 4, "s")
    chosen = choose_prompts(pool, 4, "s")
    assert len(chosen) == 4 + 3 and set(chosen) <= set(pool["spatial"]) | set(pool["non_spatial"])
    assert choose_prompts(pool, 4, "other") != chosen  # the salt (seed) changes the choice
    config = RoundConfig(push_back=PushBackConfig(prompts_per_category=2, share_of_prompts=0.5))
    ids = expansion_prompts(config, {"spatial": [5, 3, 9, 1], "non_spatial": [7]}, iteration=0)
    assert len(ids) == 3 and 7 in ids
    assert len(push_back_prompts(config, ids, 0)) == 2  # round(0.5 * 3)
    assert (
        push_back_prompts(dataclasses.replace(config, push_back=PushBackConfig(share_of_prompts=0.0)), ids, 0)
        == set()
    )


def test_merging_lora_keeps_the_models_output_and_leaves_a_plain_unet():
    torch.manual_seed(0)
    adapter = WorldAdapter(WorldDiffusionModel(SMALL).eval())
    plain_keys = set(adapter.unet.state_dict())
    from peft import LoraConfig

    adapter.unet.add_adapter(
        LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    with torch.no_grad():
        for name, param in adapter.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # B starts at zero; a non-zero delta makes the merge observable
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500])
    cond = adapter.encode_prompts(PROMPTS, guided=False, height=32, width=32)
    with torch.no_grad():
        with_lora = adapter.denoise(adapter.unet, x, t, cond.cond)
        adapter.unet.disable_adapters()
        without = adapter.denoise(adapter.unet, x, t, cond.cond)
        adapter.unet.enable_adapters()
    assert (with_lora - without).abs().max() > 1e-3

    merge_lora(adapter)
    assert set(adapter.unet.state_dict()) == plain_keys
    with torch.no_grad():
        merged = adapter.denoise(adapter.unet, x, t, cond.cond)
    torch.testing.assert_close(merged, with_lora, rtol=1e-4, atol=1e-5)
    # The next iteration can put a fresh adapter on top.
    adapter.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"]))


@pytest.mark.parametrize("lora", [True, False])
def test_two_chained_iterations_build_p2_from_the_base_and_both_checkpoints(
    tmp_path, tiny_base, tiny_reward, lora
):
    config = tiny_round(lora=lora, lora_rank=2, learning_rate=1e-2, pretrain_loss_weight=0.0)
    chain: list[Path] = []
    for k in range(2):
        result = finetune(
            config,
            family="world",
            base_path=str(tiny_base),
            chain=chain,
            rewards={"spatial": tiny_reward},
            prompts=PROMPTS,
            validation_prompts=PROMPTS,
            output_dir=tmp_path / f"it{k}",
            iteration=k,
            categories={p: "spatial" for p in PROMPTS},
        )
        chain.append(Path(result.checkpoint.path))
    p0, p1, p2 = (load_policy("world", str(tiny_base), chain[:k]) for k in range(3))
    weights = [dict(p.unet.named_parameters()) for p in (p0, p1, p2)]
    assert all(set(w) == set(weights[0]) for w in weights)  # merged: plain UNets, no LoRA layers left
    changed_01 = any(not torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    changed_12 = any(not torch.equal(weights[1][n], weights[2][n]) for n in weights[0])
    assert changed_01 and changed_12  # iteration 1 trained on top of p_1, not on the base again


def test_pretrain_data_follows_the_weight_and_the_family():
    assert pretrain_data(tiny_round(pretrain_loss_weight=0.0), "world", 0) is None
    world = pretrain_data(tiny_round(pretrain_images=3), "world", 0)
    assert len(world) == 3 and world[0][1].shape == (3, 32, 32)
    preferred = [("a red circle", torch.zeros(3, 8, 8))]
    assert pretrain_data(tiny_round(), "sd15", 0, preferred=lambda n: preferred[:n]) == preferred
    with pytest.raises(ValueError, match="preferred"):
        pretrain_data(tiny_round(), "sd15", 0)


def test_routed_reward_scores_each_image_with_its_categorys_model_only():
    calls = []

    def model(offset: float):
        def score(prompts, images):
            calls.append((offset, list(prompts)))
            return images.mean((1, 2, 3)) + offset

        return score

    categories = prompt_categories(
        {"spatial": ["left", "above"]}, {"non_spatial": ["holds"], "spatial": ["holds"]}
    )
    assert categories == {"left": "spatial", "above": "spatial", "holds": "non_spatial"}
    fn = routed_reward({"spatial": model(10.0), "non_spatial": model(20.0)}, categories)
    images = torch.full((3, 3, 2, 2), 0.5, requires_grad=True)
    out = fn(["left", "holds", "above"], images)
    assert out.tolist() == [10.5, 20.5, 10.5]
    assert sorted(calls) == [(10.0, ["left", "above"]), (20.0, ["holds"])]
    out.sum().backward()  # every image gets its gradient through its own model
    assert torch.allclose(images.grad, torch.full_like(images, 1 / 12))
    with pytest.raises(ValueError, match="no reward model"):
        fn(["unknown prompt"], images[:1])


def test_reward_scores_are_renormalised_on_the_current_models_own_samples(tiny_reward, tmp_path):
    import shutil

    import numpy as np

    from training.ml.algorithm1.steps import normalize_on_own_samples
    from training.ml.reward.checkpoint import load_reward_model, read_reward_meta
    from training.ml.reward.data import PairRecord

    checkpoint = tmp_path / "spatial"
    shutil.copytree(tiny_reward, checkpoint)
    torch.manual_seed(0)
    images = {i: torch.rand(3, 32, 32) * (0.2 + 0.2 * i) for i in range(6)}

    def record(n: int, winner: int, loser: int) -> PairRecord:
        return PairRecord(
            pair_id=n,
            prompt_id=0,
            prompt=PROMPTS[0],
            category="spatial",
            subcategory=None,
            split=None,
            winner_id=winner,
            winner_sha256="0" * 64,
            winner_path=str(winner),
            loser_id=loser,
            loser_sha256="0" * 64,
            loser_path=str(loser),
            label=1.0,
        )

    records = [record(0, 0, 1), record(1, 2, 3), record(2, 4, 5), record(3, 0, 5)]
    own = {2, 3, 4, 5}  # images 0 and 1 are the gallery's
    before = read_reward_meta(checkpoint)["metadata"]
    result = normalize_on_own_samples(checkpoint, records, own, lambda path, sha: images[int(path)])
    assert result == {"normalization_source": "own samples", "normalization_images": 4}
    model = load_reward_model(checkpoint)
    scores = model.score([PROMPTS[0]] * 4, torch.stack([images[i] for i in sorted(own)])).tolist()
    assert abs(np.mean(scores)) < 1e-4 and abs(np.std(scores, ddof=1) - 1) < 1e-4
    after = read_reward_meta(checkpoint)["metadata"]
    assert after["metrics"] == before["metrics"] and after["dataset"] == before["dataset"]
    # Without own samples the training normalisation stays.
    assert normalize_on_own_samples(checkpoint, records, set(), None) == {
        "normalization_source": "training images"
    }


def test_the_rounds_itm_reward_head_reaches_the_model_config_and_needs_a_pretrained_backbone(tmp_path):
    itm = RoundConfig(base_model="/models/sdxl", reward=RewardStageConfig(head="itm"))
    model = reward_train_config(itm, "spatial", tmp_path, iteration=0, pretrained_path="/models/blip").model
    assert (model.head_init, model.pretrained_path) == ("itm", "/models/blip")
    mlp = RoundConfig(base_model="/models/sdxl")
    assert reward_model_config(mlp, "spatial", "/models/blip").head_init == "imagereward"
    with pytest.raises(ValueError, match="pretrained"):
        reward_model_config(itm, "spatial", None)
    with pytest.raises(RoundConfigError, match="pretrained backbone"):
        RewardStageConfig(backbone="scratch", head="itm")
    with pytest.raises(RoundConfigError, match="reward head"):
        RewardStageConfig(head="linear")
