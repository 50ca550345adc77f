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
    RANKED_ERRORS,
    EncoderConfig,
    GroundingExample,
    GroundingHead,
    cell_labels,
    draw_example,
    encoder_prompt_specs,
    error_pair,
    graded_pair,
    graded_scenes,
    grounding_example,
    hard_negative,
    object_words,
    pretrain_encoder,
    ranked_pair,
    violated_facts,
)
from training.ml.world.errors import planned_scene
from training.ml.world.facts import truth_score
from training.ml.world.grammar import is_held_out, parse_prompt
from training.ml.world.layout import correct_scene, make_scene
from training.ml.world.scene import SceneObject, render_scene_array
from training.ml.world.vocab import SUBCATEGORIES


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


def test_model_evaluation_records_every_image_with_its_seed_so_two_models_pair_up():
    from training.ml.world.evaluate import evaluate_model

    prompts = {"color": ["a red circle and a blue square", "a green circle and a red square"]}
    first = evaluate_model(_CorrectRenderer(), prompts, seeds_per_prompt=2, steps=1, guidance=1.0)
    second = evaluate_model(_CorrectRenderer(), prompts, seeds_per_prompt=2, steps=1, guidance=3.0)
    assert [(p, sub, seed) for p, sub, seed, _ in first.per_image] == [
        ("a red circle and a blue square", "color", 1000),
        ("a red circle and a blue square", "color", 1001),
        ("a green circle and a red square", "color", 1002),
        ("a green circle and a red square", "color", 1003),
    ]
    assert [r[:3] for r in second.per_image] == [r[:3] for r in first.per_image]
    assert [r[3] for r in first.per_image] == [1.0, 1.0, 1.0, 1.0]


def test_a_ranked_pair_is_one_caption_with_a_correct_render_and_a_swapped_or_misplaced_one():
    specs = encoder_prompt_specs(held_out=False)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        _, images, correct = ranked_pair(specs, rng, 32)
        assert len(images) == 2 and correct in (0, 1) and images[0].shape == (32, 32, 3)
        assert not np.array_equal(images[0], images[1])
        seen.add(correct)
    assert seen == {0, 1}  # the correct render is not always first


@pytest.mark.parametrize("error", ["reverse", "swap_color", "drop", "extra"])
def test_an_error_pair_is_a_correct_scene_and_one_made_wrong_by_exactly_that_error(error):
    spec = parse_prompt("a red circle to the left of a blue square")
    rng = np.random.default_rng(0)
    pairs = [p for p in (error_pair(spec, error, rng) for _ in range(20)) if p is not None]
    assert pairs
    for right, wrong in pairs:
        assert truth_score(spec, right) == 1.0 > truth_score(spec, wrong)


def test_object_words_are_each_objects_attributes_and_shape_in_caption_order():
    assert object_words("a dotted circle inside a blue triangle", 2) == [[1, 2], [5, 6]]
    assert object_words("a small red circle to the left of a square", 2) == [[1, 2, 3], [9]]
    with pytest.raises(ValueError, match="expected 2 objects"):
        object_words("a red circle", 2)


def test_grounding_targets_are_each_objects_own_cells_and_the_relation_as_the_scene_has_it():
    rng = np.random.default_rng(1)
    for sub, text in _RELATION_PROMPTS.items():
        only = {s: [parse_prompt(text)] for s in SUBCATEGORIES}  # every draw is this prompt
        for _ in range(5):
            example = grounding_example(only, rng, 32, 4)
            assert example.caption == text and example.image.shape == (32, 32, 3)
            words = text.split()
            for positions, cells in example.objects:
                assert cells.shape == (64,) and abs(cells.sum() - 1) < 1e-6 and cells.min() >= 0
                assert words[positions[-1] - 1] in ("circle", "square", "triangle", "diamond")
            dx, dy = example.offset
            inside, contains, touching = example.flags
            if sub == "left":  # the circle is left of the square: the square lies to its right
                assert dx > abs(dy) and example.flags == (0.0, 0.0, example.flags[2])
            elif sub == "above":  # image y grows downwards: the square lies below the circle
                assert dy > abs(dx)
            elif sub == "inside":
                assert (inside, contains, touching) == (1.0, 0.0, 0.0)
            else:
                assert (inside, contains, touching) == (0.0, 0.0, 1.0)
            if sub != "inside":  # two different objects: their targets are not the same cells
                assert not np.allclose(example.objects[0][1], example.objects[1][1])


_RELATION_PROMPTS = {
    "left": "a red circle to the left of a blue square",
    "above": "a circle above a striped square",
    "inside": "a small circle inside a big square",
    "touching": "a green circle touching a square",
}


def test_the_grounding_location_relation_and_position_losses_are_hand_checkable():
    head = GroundingHead(hidden=2, cells=4)
    two_of_four = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    with torch.no_grad():
        for linear in (head.query, head.key):
            linear.weight.copy_(torch.eye(2))
            linear.bias.zero_()
        head.where.weight.copy_(two_of_four)  # cell k's logit is the token's k-th value (0 for cells 2, 3)
        head.where.bias.zero_()
        head.position.weight.zero_()  # every patch token says "the centre"
        head.position.bias.zero_()
        head.relation[-1].weight.zero_()  # a constant: the exact offset in eighths, flag logits 0
        head.relation[-1].bias.copy_(torch.tensor([2.0, -4.0, 0.0, 0.0, 0.0]))
    # [CLS] then a 2 x 2 grid of cells; tokens: [ENC], a word for cell 0, a word for cells 0 and 1.
    image_embeds = torch.cat([torch.zeros(1, 1, 2), two_of_four[None]], dim=1)
    fused = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]])
    example = GroundingExample(
        image=np.zeros((32, 32, 3)),
        caption="circle square",
        objects=(((1,), np.array([1.0, 0, 0, 0])), ((2,), np.array([0.5, 0.5, 0, 0]))),
        offset=(0.25, -0.5),
        flags=(0.0, 1.0, 0.0),
    )
    # One text layer, two heads: for word 1 the heads look at cell 0 and at cells 1-2, for word 2 at
    # [CLS] and cell 0, and at cells 0-1.
    cross = torch.zeros(1, 2, 3, 5)
    cross[0, 0, 1] = torch.tensor([0, 1.0, 0, 0, 0])
    cross[0, 1, 1] = torch.tensor([0, 0, 0.5, 0.5, 0])
    cross[0, 0, 2] = torch.tensor([0.4, 0.6, 0, 0, 0])
    cross[0, 1, 2] = torch.tensor([0, 0.2, 0.8, 0, 0])
    terms, stats = head.loss(image_embeds, fused, [example], (cross,))
    # Heads averaged: word 1 puts 0.5 on its cell; word 2 puts 0.4 and 0.4 on its two cells.
    assert terms["attention"].item() == pytest.approx((-np.log(0.5) - np.log(0.4)) / 2, rel=1e-5)
    assert stats["attention_hit"] == 1.0

    def cross_entropy(logits: tuple[float, ...], target: tuple[float, ...]) -> float:
        log_z = np.log(np.sum(np.exp(logits)))
        return -sum(t * (x - log_z) for t, x in zip(target, logits, strict=True))

    # Grounding logits are q·k / sqrt(2): word 1 sees (a, 0, 0, 0), word 2 sees (0, a, 0, 0).
    a = 2 / 2**0.5
    ground = (cross_entropy((a, 0, 0, 0), (1, 0, 0, 0)) + cross_entropy((0, a, 0, 0), (0.5, 0.5, 0, 0))) / 2
    assert terms["ground"].item() == pytest.approx(ground, rel=1e-5)
    location = (cross_entropy((2, 0, 0, 0), (1, 0, 0, 0)) + cross_entropy((0, 2, 0, 0), (0.5, 0.5, 0, 0))) / 2
    assert terms["location"].item() == pytest.approx(location, rel=1e-5)
    assert terms["relation"].item() == pytest.approx(np.log(2), rel=1e-5)  # three flag logits at 0
    # Cell centres are at ±0.5 on both axes; saying 0 is half a cell off on each: (0.5 * 2 / 2)^2.
    assert terms["position"].item() == pytest.approx(0.25, rel=1e-5)
    assert stats["ground_hit"] == stats["location_hit"] == stats["relation_side"] == 1.0


def test_relation_weight_needs_grounding_examples_and_weights_are_non_negative():
    for weight in ("relation_weight", "location_weight", "position_weight", "attention_weight"):
        with pytest.raises(ValueError, match="need grounding_examples"):
            EncoderConfig(**{weight: 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        EncoderConfig(ranked_pairs=-1)


def test_continued_pretraining_with_grounding_and_ranked_pairs_keeps_the_first_stages_record(
    tiny_encoder, tmp_path
):
    first, first_record = tiny_encoder
    config = EncoderConfig(
        steps=2,
        batch_size=4,
        hidden_size=32,
        layers=2,
        eval_examples=16,
        warmup_steps=1,
        grounding_examples=2,
        relation_weight=1.0,
        location_weight=1.0,
        position_weight=1.0,
        attention_weight=1.0,
        ranked_pairs=2,
        graded_pairs=2,
    )
    out = tmp_path / "continued"
    record = pretrain_encoder(config, out, log=None, init=first)
    info = json.loads((out / "train_info.json").read_text())
    assert info["init"]["path"] == str(first) and info["init"]["record"]["config"]["steps"] == 3
    assert info["examples_seen"] == 2 * (4 + 2 * (2 + 2) + 2)
    assert set(record["held_out"]["ranked_accuracy"]) == {*RANKED_ERRORS, "graded"}
    for key in ("rank", "graded", "ground", "location", "relation", "position", "attention"):
        assert np.isfinite(info["curve"][0][key])
    model = build_reward_model(RewardModelConfig(category="spatial", pretrained_path=str(out)), seed=0)
    assert torch.isfinite(model.eval().score(["a red circle above a square"], torch.rand(1, 3, 32, 32))).all()
    with pytest.raises(ValueError, match="differ from the config"):
        pretrain_encoder(EncoderConfig(steps=1, eval_examples=4), tmp_path / "wrong", log=None, init=first)


def test_a_relation_share_of_one_draws_only_relation_errors_and_zero_none():
    specs = encoder_prompt_specs(held_out=False)
    rng = np.random.default_rng(2)
    for _ in range(30):
        caption, images, correct = ranked_pair(specs, rng, 32, relation_share=1.0)
        spec = parse_prompt(caption)
        assert spec.relation is not None
        assert not np.array_equal(images[correct], images[1 - correct])
    captions = [ranked_pair(specs, rng, 32, relation_share=0.0)[0] for _ in range(30)]
    assert any(parse_prompt(c).relation is None for c in captions)  # attribute prompts, never drawn at 1
    with pytest.raises(ValueError, match="relation_pair_share"):
        EncoderConfig(relation_pair_share=1.5)


def test_violated_facts_count_each_wrong_fact_and_each_extra_object_once():
    spec = parse_prompt("a red circle to the left of a blue square")
    rng = np.random.default_rng(0)
    planned = {
        error: [s for s in (planned_scene(spec, rng, [error]) for _ in range(20)) if truth_score(spec, s) < 1]
        for error in ("swap_color", "reverse", "extra")
    }
    assert violated_facts(spec, planned_scene(spec, rng)) == 0
    # Swapped colours: both objects' colour facts are false; reversed: the relation; extra: one object.
    assert {violated_facts(spec, s) for s in planned["swap_color"]} == {2}
    assert {violated_facts(spec, s) for s in planned["reverse"]} == {1}
    assert {violated_facts(spec, s) for s in planned["extra"]} == {1}
    assert violated_facts(spec, planned_scene(spec, rng, ["swap_color", "reverse"])) == 3


def test_a_graded_pair_prefers_the_scene_with_fewer_violated_facts_and_is_not_always_first():
    specs = encoder_prompt_specs(held_out=False)
    rng = np.random.default_rng(1)
    better_seen, several = set(), 0
    for _ in range(40):
        spec, scenes, better = graded_scenes(specs, rng, max_errors=3)
        assert violated_facts(spec, scenes[better]) < violated_facts(spec, scenes[1 - better])
        better_seen.add(better)
        several += violated_facts(spec, scenes[better]) > 0  # both wrong, one less so
    assert better_seen == {0, 1} and several > 0
    caption, images, better = graded_pair(specs, rng, 32)
    assert len(images) == 2 and images[0].shape == (32, 32, 3) and better in (0, 1)
    with pytest.raises(ValueError, match="graded_max_errors"):
        EncoderConfig(graded_max_errors=0)
