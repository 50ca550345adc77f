"""Algorithm 1's ReFL stage: reward checkpoints in, resumable run, deployable checkpoint out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from training.ml.common import CheckpointError, config_to_dict, read_checkpoint_meta
from training.ml.refl.adapters import SD15Adapter
from training.ml.refl.config import GuardConfig, LoRASettings, ReFLConfig
from training.ml.refl.sampler import sample
from training.ml.refl.stage import (
    ReFLStageConfig,
    ReFLStageData,
    RewardSource,
    apply_refl_checkpoint,
    finetune_refl,
    stage_config_from_dict,
)
from training.ml.refl.tiny import tiny_sd15_pipeline

TOKENIZER = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizers" / "clip"
PROMPTS = ["a red cube left of a blue ball", "two green cats", "a small house under a tree"]
VALIDATION = ["a dog on a sofa", "three yellow cups"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def redness(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
    return images[:, 0].mean((1, 2))


def refl_config(**overrides) -> ReFLConfig:
    base = dict(
        num_inference_steps=4,
        late_steps=2,
        batch_size=2,
        max_steps=2,
        learning_rate=2e-2,
        reward_scale=1.0,
        lora=LoRASettings(rank=2),
        guard=GuardConfig(every=0),
    )
    base.update(overrides)
    return ReFLConfig(**base)


@pytest.fixture(scope="module")
def reward_checkpoints(tmp_path_factory):
    from training.ml.reward.checkpoint import save_reward_model
    from training.ml.reward.config import RewardModelConfig
    from training.ml.reward.model import build_reward_model

    root = tmp_path_factory.mktemp("rewards")
    paths = {}
    for i, category in enumerate(("attribute_binding", "spatial", "non_spatial")):
        paths[category] = str(
            save_reward_model(build_reward_model(RewardModelConfig.tiny(category), seed=i), root / category)
        )
    return paths


def test_stage_trains_from_reward_checkpoints_and_resumes_to_a_longer_run(tmp_path, reward_checkpoints):
    sources = (
        RewardSource("attribute_binding", reward_checkpoints["attribute_binding"], 1.0),
        RewardSource("spatial", reward_checkpoints["spatial"], 0.5),
    )
    config = ReFLStageConfig(refl=refl_config(), output_dir=str(tmp_path / "run"), rewards=sources)
    data = ReFLStageData(prompts=PROMPTS, adapter=SD15Adapter(tiny_sd15_pipeline(TOKENIZER)))
    first = finetune_refl(config, data)
    assert first.path == tmp_path / "run" / "last" and first.metrics["steps"] == 2
    assert set(first.metrics["last"]) >= {"reward/attribute_binding", "reward/spatial"}
    longer = dataclasses.replace(config, refl=refl_config(max_steps=3))
    seen = []
    second = finetune_refl(
        longer,
        ReFLStageData(prompts=PROMPTS, adapter=SD15Adapter(tiny_sd15_pipeline(TOKENIZER))),
        lambda step, total, metrics: seen.append(step),
    )
    assert seen == [3] and second.metrics["steps"] == 3  # resumed at step 2, ran one more


def test_stage_config_refuses_to_optimise_its_held_out_evaluator(reward_checkpoints):
    path = reward_checkpoints["spatial"]
    with pytest.raises(ValueError, match="held-out"):
        ReFLStageConfig(
            refl=refl_config(), output_dir="x", rewards=(RewardSource("s", path),), heldout_paths=(path,)
        )


def test_stage_config_round_trips_through_json(reward_checkpoints):
    config = ReFLStageConfig(
        refl=refl_config(ema_decay=0.9),
        output_dir="out",
        rewards=(RewardSource("spatial", reward_checkpoints["spatial"], 0.3),),
        heldout_paths=(reward_checkpoints["non_spatial"],),
    )
    assert stage_config_from_dict(config_to_dict(config)) == config


def test_held_out_ensemble_from_checkpoints_drives_the_guard(tmp_path, reward_checkpoints):
    config = ReFLStageConfig(
        refl=refl_config(max_steps=2, guard=GuardConfig(every=1, patience=5)),
        output_dir=str(tmp_path / "run"),
        heldout_paths=(reward_checkpoints["non_spatial"], reward_checkpoints["spatial"]),
    )
    data = ReFLStageData(
        prompts=PROMPTS,
        validation_prompts=VALIDATION,
        adapter=SD15Adapter(tiny_sd15_pipeline(TOKENIZER)),
        reward_fns={"red": redness},
    )
    info = finetune_refl(config, data)
    assert [e["step"] for e in info.metrics["guard_history"]] == [0, 1, 2]
    assert info.path == tmp_path / "run" / "best"


@pytest.mark.parametrize("mode,ema", [("lora", None), ("lora", 0.5), ("full", None)])
def test_applied_checkpoint_samples_like_the_trained_model(tmp_path, mode, ema):
    config = ReFLStageConfig(
        refl=refl_config(train_mode=mode, ema_decay=ema, learning_rate=2e-2 if mode == "lora" else 1e-3),
        output_dir=str(tmp_path / "run"),
    )
    trained = SD15Adapter(tiny_sd15_pipeline(TOKENIZER))
    info = finetune_refl(config, ReFLStageData(prompts=PROMPTS, adapter=trained, reward_fns={"red": redness}))
    fresh = SD15Adapter(tiny_sd15_pipeline(TOKENIZER))
    base_images = sample(fresh, VALIDATION, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    apply_refl_checkpoint(fresh, info.path)
    ours = sample(fresh, VALIDATION, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    expected = sample(trained, VALIDATION, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    assert (ours - base_images).abs().max() > 1e-5  # the fine-tuning is really in there


@pytest.mark.parametrize(
    "family,mode,ema",
    [("sd15", "lora", None), ("sd15", "full", 0.5), ("sdxl", "lora", 0.5), ("sdxl", "full", None)],
)
def test_plain_diffusers_loads_the_checkpoint_and_samples_like_the_trained_model(tmp_path, family, mode, ema):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    from training.ml.refl.adapters import SDXLAdapter
    from training.ml.refl.tiny import tiny_sdxl_pipeline

    build, adapter_class, pipeline_class = {
        "sd15": (tiny_sd15_pipeline, SD15Adapter, StableDiffusionPipeline),
        "sdxl": (tiny_sdxl_pipeline, SDXLAdapter, StableDiffusionXLPipeline),
    }[family]
    build(TOKENIZER).save_pretrained(tmp_path / "base")
    config = ReFLStageConfig(
        refl=refl_config(
            train_mode=mode,
            ema_decay=ema,
            learning_rate=2e-2 if mode == "lora" else 1e-3,
            # alpha ≠ rank: the LoRA's scale must travel with the file.
            lora=LoRASettings(rank=2, alpha=6.0),
        ),
        output_dir=str(tmp_path / "run"),
        family=family,
    )
    trained = adapter_class(build(TOKENIZER))
    info = finetune_refl(config, ReFLStageData(prompts=PROMPTS, adapter=trained, reward_fns={"red": redness}))
    expected = sample(trained, VALIDATION, num_inference_steps=4, generator=torch.Generator().manual_seed(0))

    # Only diffusers from here: the base folder plus the checkpoint's diffusers-format export.
    def draw(pipe):
        generator = torch.Generator().manual_seed(0)
        return pipe(
            VALIDATION, num_inference_steps=4, guidance_scale=1.0, generator=generator, output_type="pt"
        )

    pipe = pipeline_class.from_pretrained(tmp_path / "base", local_files_only=True)
    base = draw(pipe).images
    if mode == "lora":
        pipe.load_lora_weights(info.path)
    else:
        unet = UNet2DConditionModel.from_pretrained(info.path, subfolder="unet")
        pipe = pipeline_class.from_pretrained(tmp_path / "base", unet=unet, local_files_only=True)
    ours = draw(pipe).images
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert (expected - base).abs().max() > 1e-4  # the fine-tuning is really in there


def test_applying_a_checkpoint_of_another_family_is_refused(tmp_path):
    config = ReFLStageConfig(refl=refl_config(max_steps=1), output_dir=str(tmp_path / "run"))
    info = finetune_refl(
        config,
        ReFLStageData(
            prompts=PROMPTS, adapter=SD15Adapter(tiny_sd15_pipeline(TOKENIZER)), reward_fns={"r": redness}
        ),
    )
    from training.ml.refl.adapters import SDXLAdapter
    from training.ml.refl.tiny import tiny_sdxl_pipeline

    with pytest.raises(CheckpointError, match="sd15"):
        apply_refl_checkpoint(SDXLAdapter(tiny_sdxl_pipeline(TOKENIZER)), info.path)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_stage_loads_the_base_model_from_a_local_diffusers_folder(tmp_path, family, reward_checkpoints):
    from training.ml.refl.tiny import tiny_sdxl_pipeline

    pipe = (tiny_sd15_pipeline if family == "sd15" else tiny_sdxl_pipeline)(TOKENIZER)
    pipe.save_pretrained(tmp_path / "base")
    expected = pipe(
        VALIDATION,
        num_inference_steps=3,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    from training.ml.refl.stage import ADAPTER_LOADERS

    loaded = ADAPTER_LOADERS[family](str(tmp_path / "base"))
    assert loaded.family == family
    ours = sample(loaded, VALIDATION, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, expected.images, rtol=0, atol=1e-6)
    config = ReFLStageConfig(
        refl=refl_config(max_steps=1),
        output_dir=str(tmp_path / "run"),
        family=family,
        base_model_path=str(tmp_path / "base"),
        rewards=(RewardSource("spatial", reward_checkpoints["spatial"]),),
    )
    info = finetune_refl(config, ReFLStageData(prompts=PROMPTS))
    assert info.metrics["steps"] == 1
    assert read_checkpoint_meta(info.path)["config"]["model"]["source"] == str((tmp_path / "base").resolve())
