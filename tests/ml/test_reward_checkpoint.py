from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from training.ml.common import (
    CheckpointError,
    StopTraining,
    config_from_dict,
    config_to_dict,
    read_checkpoint_meta,
    report_progress,
    save_checkpoint,
)
from training.ml.reward.checkpoint import load_reward_model, save_reward_model
from training.ml.reward.config import AugmentConfig, RewardModelConfig, RewardTrainConfig
from training.ml.reward.model import build_reward_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = build_reward_model(RewardModelConfig.tiny("spatial", freeze_fraction=0.5), seed=0)
    with torch.no_grad():
        for m in model.head.layers:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=0.5)
    model.set_normalization(0.3, 2.0)
    path = tmp_path_factory.mktemp("ckpt") / "reward"
    dataset = {"sha256": "ab" * 32, "counts": {"pairs": 12, "prompts": 3}}
    save_reward_model(model.eval(), path, metrics={"test_accuracy": 0.75}, dataset=dataset)
    return model, path


def test_save_then_load_gives_identical_scores(saved):
    model, path = saved
    images = torch.rand(3, 3, 40, 40)
    prompts = ["a red cube left of a ball", "a dog", "a red cube left of a ball"]
    loaded = load_reward_model(path)
    assert not loaded.training
    assert torch.equal(loaded.score(prompts, images), model.score(prompts, images))
    assert float(loaded.score_mean) == pytest.approx(0.3) and float(loaded.score_std) == pytest.approx(2.0)
    assert loaded.trainable_parameter_names() == model.trainable_parameter_names()


def test_checkpoint_describes_itself(saved):
    _, path = saved
    meta = json.loads((path / "checkpoint.json").read_text())
    assert meta["kind"] == "itercomp.reward_model" and meta["config"]["category"] == "spatial"
    assert meta["metadata"]["normalization"] == {"mean": pytest.approx(0.3), "std": pytest.approx(2.0)}
    assert meta["metadata"]["metrics"]["test_accuracy"] == 0.75
    assert meta["metadata"]["dataset"]["sha256"] == "ab" * 32
    assert meta["metadata"]["dataset"]["counts"]["pairs"] == 12
    assert meta["metadata"]["backbone"]["vision"]["hidden_size"] == 32
    assert (path / "model.safetensors").is_file() and (path / "tokenizer").is_dir()


def test_loading_with_a_different_expected_config_is_refused_naming_the_field(saved):
    model, path = saved
    assert load_reward_model(path, expected=model.config) is not None
    other = dataclasses.replace(model.config, category="non_spatial", freeze_fraction=0.7)
    with pytest.raises(
        CheckpointError, match=r"category: expected 'non_spatial', checkpoint has 'spatial'"
    ) as info:
        load_reward_model(path, expected=other)
    assert "freeze_fraction" in str(info.value)
    bigger = RewardModelConfig.small("spatial", freeze_fraction=0.5)
    with pytest.raises(CheckpointError, match=r"vision\.hidden_size"):
        load_reward_model(path, expected=bigger)


def test_weights_that_do_not_fit_the_recorded_architecture_are_refused(saved, tmp_path):
    _, path = saved
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    state = load_file(str(broken / "model.safetensors"))
    state["head.layers.0.weight"] = torch.zeros(3, 3)
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="shape mismatch.*head.layers.0.weight"):
        load_reward_model(broken)


def test_other_kinds_and_missing_checkpoints_are_refused(tmp_path):
    save_checkpoint(tmp_path / "refl", {"w": torch.zeros(2)}, kind="itercomp.refl", config={})
    with pytest.raises(CheckpointError, match="expected a 'itercomp.reward_model'"):
        load_reward_model(tmp_path / "refl")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_reward_model(tmp_path / "nothing")


def test_saving_over_an_existing_checkpoint_replaces_it_whole(tmp_path):
    target = tmp_path / "ck"
    save_checkpoint(target, {"w": torch.zeros(2)}, kind="k", config={"a": 1}, extra_files={})
    save_checkpoint(target, {"w": torch.ones(3)}, kind="k", config={"a": 2})
    assert read_checkpoint_meta(target, kind="k")["config"] == {"a": 2}
    assert load_file(str(target / "model.safetensors"))["w"].shape == (3,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no staging or backup folders left


def test_train_config_round_trips_through_json_and_refuses_unknown_fields():
    config = RewardTrainConfig(
        model=RewardModelConfig.tiny("attribute_binding"),
        output_dir="out",
        augment=AugmentConfig(crop_scale=(0.8, 1.0), brightness=0.1),
        split_fractions=(0.7, 0.15, 0.15),
    )
    data = json.loads(json.dumps(config_to_dict(config)))
    assert config_from_dict(RewardTrainConfig, data) == config
    data["model"]["vision"]["hidden_sise"] = 3
    with pytest.raises(CheckpointError, match="hidden_sise"):
        config_from_dict(RewardTrainConfig, data)


def test_progress_callbacks_stop_by_returning_false_or_raising():
    assert report_progress(None, 1, 2, {}) is True
    assert report_progress(lambda s, t, m: None, 1, 2, {"loss": 1.0}) is True
    assert report_progress(lambda s, t, m: False, 1, 2, {}) is False

    def stop(step, total, metrics):
        raise StopTraining

    assert report_progress(stop, 1, 2, {}) is False
