"""Grammar, renderer and layout rules of the synthetic world."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.ml.world import (
    SUBCATEGORIES,
    all_prompts,
    correct_scene,
    generate_prompts,
    parse_prompt,
    render_prompt,
    truth_score,
)
from training.ml.world.layout import MIN_GAP, spatial_holds
from training.ml.world.scene import Scene, SceneObject, render_scene_array
from training.ml.world.tokenizer import VOCAB_PATH, WordTokenizer, build_vocab


def test_render_prompt_is_deterministic_per_seed():
    prompt = "a striped triangle to the left of a green diamond"
    first = np.asarray(render_prompt(prompt, seed=7))
    again = np.asarray(render_prompt(prompt, seed=7))
    other = np.asarray(render_prompt(prompt, seed=8))
    assert first.shape == (32, 32, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_render_prompt_scales_to_other_sizes():
    image = render_prompt("a red circle and a blue square", seed=0, size=64)
    assert image.size == (64, 64)


@pytest.mark.parametrize("subcategory", SUBCATEGORIES)
def test_correct_scenes_satisfy_every_fact_of_their_prompt(subcategory):
    for prompt in generate_prompts(subcategory, 25, seed=3):
        for seed in range(2):
            assert truth_score(parse_prompt(prompt), correct_scene(prompt, seed)) == 1.0, prompt


@pytest.mark.parametrize("subcategory", SUBCATEGORIES)
def test_every_prompt_parses_back_to_its_own_text_and_subcategory(subcategory):
    for prompt in all_prompts(subcategory):
        spec = parse_prompt(prompt)
        assert spec.text == prompt
        assert spec.subcategory == subcategory


def test_generate_prompts_is_deduplicated_deterministic_and_capped():
    first = generate_prompts("spatial", 200, seed=1)
    assert len(set(first)) == 200
    assert first == generate_prompts("spatial", 200, seed=1)
    assert first != generate_prompts("spatial", 200, seed=2)
    assert sorted(generate_prompts("shape", 10_000, seed=0)) == sorted(all_prompts("shape"))


def test_parse_prompt_rejects_words_outside_the_grammar():
    with pytest.raises(ValueError):
        parse_prompt("a red elephant and a blue square")
    with pytest.raises(ValueError):
        parse_prompt("a red circle beside a blue square")


def test_unrelated_objects_keep_the_world_gap_and_a_clear_dominant_axis():
    for prompt in generate_prompts("color", 30, seed=5):
        a, b = correct_scene(prompt, 0).objects
        gap_x = max(b.left - (a.left + a.extent), a.left - (b.left + b.extent))
        gap_y = max(b.top - (a.top + a.extent), a.top - (b.top + b.extent))
        assert max(gap_x, gap_y) >= MIN_GAP
        dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
        assert abs(abs(dx) - abs(dy)) >= 3


def test_spatial_relation_is_read_from_centres_with_image_y_downwards():
    assert spatial_holds((5, 10), (20, 12), "left of")
    assert spatial_holds((20, 12), (5, 10), "right of")
    assert spatial_holds((10, 4), (12, 20), "above")
    assert not spatial_holds((10, 4), (12, 20), "below")


def test_textures_are_drawn_in_the_objects_dark_shade():
    solid, striped = (SceneObject("square", "blue", texture, 12, 10, 10) for texture in ("solid", "striped"))
    solid_img, _ = render_scene_array(Scene((solid,)))
    striped_img, _ = render_scene_array(Scene((striped,)))
    inside = (slice(11, 21), slice(11, 21))
    assert solid_img[inside].reshape(-1, 3).std(axis=0).max() < 1e-4
    # Dark rows are the same hue at half the value.
    rows = striped_img[inside].max(axis=-1).mean(axis=1)
    assert rows.max() / rows.min() == pytest.approx(2.0, rel=0.05)


def test_committed_vocabulary_matches_the_grammar():
    committed = json.loads(VOCAB_PATH.read_text())
    assert committed["vocab"] == build_vocab()
    tokenizer = WordTokenizer.load()
    for subcategory in SUBCATEGORIES:
        for prompt in generate_prompts(subcategory, 20, seed=0):
            ids = tokenizer.encode(prompt)
            assert len(ids) == tokenizer.max_length
            assert tokenizer.decode(ids) == prompt
            assert tokenizer.vocab.index("[UNK]") not in ids
