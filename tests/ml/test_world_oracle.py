"""The image oracle on hand-made scenes: every attribute, every relation, missing and extra objects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.ml.world import oracle_report, oracle_score, parse_prompt, truth_facts
from training.ml.world.layout import make_scene
from training.ml.world.oracle_eval import measure_oracle
from training.ml.world.scene import SceneObject, render_scene, render_scene_array


def obj(shape, color, left, top, extent=12, texture="solid"):
    return SceneObject(shape, color, texture, extent, left, top)


def check(prompt, *objects):
    """Oracle report for a hand-made scene, after asserting it agrees with the scene truth on every fact."""
    scene = make_scene(list(objects))
    report = oracle_report(prompt, render_scene(scene))
    assert report["facts"] == truth_facts(parse_prompt(prompt), scene)
    return report


def test_correct_colour_binding_scores_one_and_swapped_colours_fail_both_colour_facts():
    prompt = "a red circle and a blue square"
    assert check(prompt, obj("circle", "red", 2, 10), obj("square", "blue", 18, 10))["score"] == 1.0
    swapped = check(prompt, obj("circle", "blue", 2, 10), obj("square", "red", 18, 10))
    assert swapped["facts"]["color:circle"] is False and swapped["facts"]["color:square"] is False
    assert swapped["facts"]["present:circle"] and swapped["facts"]["present:square"]
    assert swapped["score"] == 0.5


@pytest.mark.parametrize(
    ("first", "second"), [("striped", "dotted"), ("solid", "striped"), ("dotted", "solid")]
)
def test_textures_are_read_from_pixels(first, second):
    prompt = f"a {first} triangle and a {second} diamond"
    right = check(
        prompt,
        obj("triangle", "green", 2, 2, texture=first),
        obj("diamond", "purple", 18, 18, texture=second),
    )
    assert right["score"] == 1.0
    wrong = check(
        prompt,
        obj("triangle", "green", 2, 2, texture=second),
        obj("diamond", "purple", 18, 18, texture=second),
    )
    assert wrong["facts"]["texture:triangle"] is False and wrong["facts"]["texture:diamond"] is True


def test_small_textured_objects_keep_their_texture():
    for texture in ("solid", "striped", "dotted"):
        prompt = f"a {texture} circle and a {texture} square"
        report = check(
            prompt, obj("circle", "yellow", 4, 4, 8, texture), obj("square", "blue", 20, 18, 8, texture)
        )
        assert report["facts"]["texture:circle"] and report["facts"]["texture:square"]


def test_sizes_are_read_from_the_fitted_extent():
    prompt = "a big circle and a small square"
    assert check(prompt, obj("circle", "red", 2, 2, 12), obj("square", "blue", 20, 20, 8))["score"] == 1.0
    swapped = check(prompt, obj("circle", "red", 2, 2, 8), obj("square", "blue", 18, 18, 12))
    assert swapped["facts"]["size:circle"] is False and swapped["facts"]["size:square"] is False


@pytest.mark.parametrize(
    ("relation", "a_pos", "b_pos"),
    [
        ("left of", (2, 10), (18, 12)),
        ("right of", (18, 12), (2, 10)),
        ("above", (10, 2), (12, 18)),
        ("below", (12, 18), (10, 2)),
    ],
)
def test_each_spatial_relation_holds_and_its_mirror_does_not(relation, a_pos, b_pos):
    prompt = f"a red triangle {'to the ' + relation if 'of' in relation else relation} a blue circle"
    held = check(prompt, obj("triangle", "red", *a_pos), obj("circle", "blue", *b_pos))
    assert held["facts"]["relation"] is True and held["score"] == 1.0
    mirrored = check(prompt, obj("triangle", "red", *b_pos), obj("circle", "blue", *a_pos))
    assert mirrored["facts"]["relation"] is False
    assert mirrored["score"] == 0.5  # objects right, relation wrong: half of a relation prompt's score


def test_inside_needs_the_small_object_within_the_container():
    prompt = "a red circle inside a blue square"
    inside = check(prompt, obj("square", "blue", 4, 4, 24), obj("circle", "red", 12, 12, 8))
    assert inside["facts"]["relation"] is True and inside["score"] == 1.0
    apart = check(prompt, obj("square", "blue", 2, 2, 12), obj("circle", "red", 20, 20, 8))
    assert apart["facts"]["relation"] is False
    reversed_ = check(prompt, obj("circle", "red", 4, 4, 24), obj("square", "blue", 12, 12, 8))
    assert reversed_["facts"]["relation"] is False


def test_touching_needs_contact_but_not_containment():
    prompt = "a green square touching a yellow circle"
    touching = check(prompt, obj("square", "green", 4, 10), obj("circle", "yellow", 16, 10))
    assert touching["facts"]["relation"] is True and touching["score"] == 1.0
    apart = check(prompt, obj("square", "green", 2, 10), obj("circle", "yellow", 19, 10))
    assert apart["facts"]["relation"] is False


def test_a_missing_object_fails_its_presence_attributes_and_the_relation():
    prompt = "a purple diamond above a red square"
    report = check(prompt, obj("diamond", "purple", 10, 2))
    assert report["facts"]["present:square"] is False and report["facts"]["color:square"] is False
    assert report["facts"]["relation"] is False
    assert report["score"] == pytest.approx(0.5 * 2 / 4)


def test_extra_objects_divide_the_score():
    prompt = "a red circle and a blue square"
    base = [obj("circle", "red", 2, 2), obj("square", "blue", 18, 2)]
    assert check(prompt, *base)["score"] == 1.0
    one_extra = check(prompt, *base, obj("triangle", "green", 10, 20, 8))
    assert one_extra["n_extra"] == 1 and one_extra["facts"]["no_extra"] is False
    assert one_extra["score"] == 0.5
    # A second circle in another colour is also an object nobody asked for.
    duplicate = check(prompt, *base, obj("circle", "yellow", 10, 20, 8))
    assert duplicate["n_extra"] == 1 and duplicate["facts"]["color:circle"] is True
    assert duplicate["score"] == 0.5


def test_blank_and_background_only_images_score_zero():
    assert oracle_score("a red circle and a blue square", np.full((32, 32, 3), 0.9, dtype=np.float32)) == 0.0
    noise = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    assert oracle_score("a red circle and a blue square", noise) < 0.5


def test_oracle_accepts_pil_uint8_float_and_chw_tensors_alike():
    prompt = "a striped triangle to the left of a green diamond"
    scene = make_scene([obj("triangle", "red", 2, 10, texture="striped"), obj("diamond", "green", 18, 10)])
    image = render_scene(scene)
    as_float, _ = render_scene_array(scene)
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    scores = {oracle_score(prompt, x) for x in (image, np.asarray(image), as_float, tensor)}
    assert scores == {1.0}


@pytest.mark.parametrize("subcategory", ["texture", "spatial", "non_spatial"])
def test_oracle_matches_truth_on_degraded_correct_and_wrong_renders(subcategory):
    result = measure_oracle(subcategory, 40, seed=11, degraded=True)
    assert result.accuracy >= 0.97
    assert np.mean(result.score_correct) > np.mean(result.score_wrong) + 0.2
