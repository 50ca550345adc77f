"""The synthetic world's pretrained BLIP encoder: its data, its labels, and that reward models load it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.ml.algorithm1.config import RewardStageConfig, RoundConfig
from training.ml.algorithm1.steps import reward_model_config
from training.ml.reward.config import RewardModelConfig
from training.ml.reward.model import build_reward_model
from training.ml.world.encoder import (
    EMPTY_COLOR,
    EMPTY_SHAPE,
    EMPTY_TEXTURE,
    ENCODER_DIR,
    EncoderConfig,
    cell_labels,
    draw_example,
    encoder_prompt_specs,
    hard_negative,
    pretrain_encoder,
)
from training.ml.world.facts import truth_score
from training.ml.world.grammar import is_held_out, parse_prompt
from training.ml.world.layout import correct_scene, make_scene
from training.ml.world.scene import SceneObject, render_scene_array


def test_a_hard_negative_caption_differs_by_one_edit_and_is_false_of_the_original_scene():
    rng = np.random.default_rng(0)
    false_count = 0
    for text in ["a red circle and a blue square", "a circle to the left of a striped square"]:
        spec = parse_prompt(text)
        for seed in range(20):
            negative = hard_negative(spec, rng)
            assert negative.text != spec.text
            false_count += truth_score(negative, correct_scene(text, seed)) < 1.0
    # An edit can still be true of a scene (an unstated colour may happen to match); almost never.
    assert false_count >= 36


def _negative_kind(spec, negative) -> str:
    """Which of the four edits turned ``spec`` into ``negative``."""
    shapes = [o.shape for o in spec.objects]
    if negative.relation != spec.relation or (
        spec.relation and [o.shape for o in negative.objects] == shapes[::-1]
    ):
        return "relation"
    if [o.shape for o in negative.objects] != shapes:
        return "shape"
    for key in ("color", "texture", "size"):
        before = [getattr(o, key) for o in spec.objects]
        after = [getattr(o, key) for o in negative.objects]
        if after != before:
            return "swap" if after == before[::-1] else "change"
    return "none"


def test_hard_negative_kind_weights_draw_only_the_kinds_asked_for_and_each_in_proportion():
    rng = np.random.default_rng(0)
    relational = parse_prompt("a red circle to the left of a blue square")
    plain = parse_prompt("a red circle and a blue square")
    swaps_only = [_negative_kind(plain, hard_negative(plain, rng, (0, 0, 1, 0))) for _ in range(50)]
    assert set(swaps_only) == {"swap"}
    # A relation weight on a prompt without a relation is not turned into another kind.
    assert {_negative_kind(plain, hard_negative(plain, rng, (5, 0, 0, 1))) for _ in range(50)} == {"change"}
    kinds = [_negative_kind(relational, hard_negative(relational, rng, (3, 0, 1, 0))) for _ in range(400)]
    assert set(kinds) == {"relation", "swap"} and 0.68 < kinds.count("relation") / 400 < 0.82


@pytest.mark.parametrize("weights", [(1, 1, 1), (1, -1, 1, 1), (1, 0, 0, 0)])
def test_negative_kind_weights_must_be_four_usable_weights(weights):
    with pytest.raises(ValueError, match="negative_kind_weights"):
        EncoderConfig(negative_kind_weights=weights)


def test_the_default_hard_negatives_are_the_committed_encoders_draws():
    # Drawn with the code the committed encoder was trained with (before kind weights existed): unweighted
    # draws must keep that random stream, or the recorded retrain command would no longer reproduce it.
    prompts = [
        "a striped circle above a dotted square",
        "a red circle and a blue square",
        "a small circle and a big square",
        "a circle inside a purple square",
    ]
    rng = np.random.default_rng(3)
    assert [hard_negative(parse_prompt(p), rng).text for p in prompts * 3] == [
        "a solid circle above a dotted square",
        "a purple circle and a blue square",
        "a small circle and a small square",
        "a purple square inside a circle",
        "a striped circle below a dotted square",
        "a red diamond and a blue square",
        "a small triangle and a big square",
        "a circle inside a green square",
        "a striped circle below a dotted square",
        "a green circle and a blue square",
        "a small circle and a small square",
        "a diamond inside a purple square",
    ]


def test_cell_labels_name_the_object_covering_each_cell_and_empty_elsewhere():
    obj = SceneObject("square", "blue", "solid", extent=8, left=0, top=0)
    scene = make_scene([obj])
    _, coverages = render_scene_array(scene, 32)
    labels = cell_labels(coverages, scene.objects, patch=4)
    assert labels.shape == (3, 8, 8)
    # The 8 px square fills the top-left 2x2 cells; every other cell is empty.
    assert (labels[:, :2, :2] == np.array([1, 3, 0])[:, None, None]).all()  # square, blue, solid
    assert labels[0, 2:, :].tolist() == [[EMPTY_SHAPE] * 8] * 6
    assert (labels[1, :, 2:] == EMPTY_COLOR).all() and (labels[2, 2:, 2:] == EMPTY_TEXTURE).all()


def test_encoder_examples_come_from_training_prompts_and_mix_matches_and_mismatches():
    specs = encoder_prompt_specs(held_out=False)
    assert all(not is_held_out(spec.text) for pool in specs.values() for spec in pool)
    rng = np.random.default_rng(1)
    examples = [draw_example(specs, rng, EncoderConfig()) for _ in range(300)]
    share = np.mean([match for _, _, match, _, _ in examples])
    assert 0.3 < share < 0.7
    assert {style for *_, style in examples} == {"clean", "degraded", "blob", "noisy"}
    assert all(image.shape == (32, 32, 3) and image.min() >= 0 and image.max() <= 1 for image, *_ in examples)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoder")
    config = EncoderConfig(steps=3, batch_size=8, hidden_size=32, layers=2, eval_examples=16, warmup_steps=1)
    record = pretrain_encoder(config, out, log=None)
    return out, record


def test_pretraining_saves_a_blip_folder_with_its_record(tiny_encoder):
    folder, record = tiny_encoder
    for name in (
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "preprocessor_config.json",
        "train_info.json",
    ):
        assert (folder / name).is_file(), name
    info = json.loads((folder / "train_info.json").read_text())
    assert info["config"]["steps"] == 3 and info["examples_seen"] == 24
    assert 0 <= info["held_out"]["itm_accuracy"] <= 1 and 0 <= info["held_out"]["cell_accuracy"] <= 1
    assert record["held_out"] == info["held_out"]


def test_a_reward_model_loads_the_world_encoder_reads_world_words_and_freezes_most_of_it(tiny_encoder):
    folder, _ = tiny_encoder
    model = build_reward_model(RewardModelConfig(category="spatial", pretrained_path=str(folder)), seed=0)
    ids, _ = model.tokenize(["a red circle to the left of a striped square"])
    assert model.tokenizer.unk_token_id not in ids[0].tolist()
    assert ids[0, 0].item() == model.tokenizer.enc_token_id
    assert model.preprocess.image_size == 32
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("vision_model.embeddings") for n in frozen)
    scores = model.eval().score(["a red circle and a blue square"] * 2, torch.rand(2, 3, 32, 32))
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_synthetic_rounds_start_reward_models_from_the_world_encoder_unless_told_scratch():
    pretrained = reward_model_config(RoundConfig(), "spatial")
    assert pretrained.pretrained_path == str(ENCODER_DIR) and pretrained.freeze_fraction == 0.7
    override = reward_model_config(RoundConfig(), "spatial", "/elsewhere/encoder")
    assert override.pretrained_path == "/elsewhere/encoder"
    scratch = reward_model_config(RoundConfig(reward=RewardStageConfig(backbone="scratch")), "spatial", "/x")
    assert scratch.pretrained_path is None and scratch.freeze_fraction == 0.0


def test_rounds_stored_before_the_backbone_setting_read_back_as_from_scratch():
    stored = RoundConfig().to_dict()
    del stored["reward"]["backbone"]
    assert RoundConfig.from_dict(stored).reward.backbone == "scratch"
    assert RoundConfig.from_dict(RoundConfig().to_dict()).reward.backbone == "pretrained"


class _CorrectRenderer:
    """A 'model' whose samples are the world's correct renders: every fact holds, nothing extra is drawn."""

    def eval(self):
        return self

    def sample(self, prompts, seeds, steps, guidance):
        from training.ml.world.layout import render_prompt

        arrays = [
            np.asarray(render_prompt(p, s), dtype=np.float32) / 255
            for p, s in zip(prompts, seeds, strict=True)
        ]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def test_model_evaluation_reports_the_share_of_images_with_each_fact_right():
    from training.ml.world.evaluate import evaluate_model

    prompts = {
        "color": ["a red circle and a blue square"],
        "spatial": ["a circle to the left of a square"],
    }
    scores = evaluate_model(_CorrectRenderer(), prompts, seeds_per_prompt=2, steps=1, guidance=1.0)
    assert scores.n_images == 4
    assert scores.facts == {
        "object_present": 1.0,
        "attribute_right": 1.0,
        "relation_right": 1.0,
        "extras": 0.0,
    }
    assert scores.by_subcategory == {"color": 1.0, "spatial": 1.0}
