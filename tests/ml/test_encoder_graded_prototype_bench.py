"""bench/encoder_graded_prototype.py at toy size: the research prototype still writes a BLIP folder the
zero-shot and active-selection benches can load (its recorded runs are in BENCHMARKS.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.ml.bench_run import run_bench

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("mix", "extra"), [("plan", []), ("relation", []), ("binding", ["--grounding", "2"])]
)
def test_the_prototype_continues_the_committed_encoder_and_saves_a_loadable_folder(tmp_path, mix, extra):
    out = tmp_path / "encoder"
    run_bench(
        "encoder_graded_prototype.py",
        "--out",
        str(out),
        "--steps",
        "2",
        "--pairs",
        "8",
        "--error-mix",
        mix,
        *extra,
    )
    info = json.loads((out / "train_info.json").read_text())
    assert info["prototype"]["error_mix"] == mix and 0 <= info["held_out"]["itm_accuracy"] <= 1
    import torch
    from encoder_zero_shot import ItmScorer

    margins = ItmScorer(str(out))("a red circle to the left of a blue square", torch.rand(2, 3, 32, 32))
    assert len(margins) == 2 and all(np.isfinite(margins))


def test_the_relation_mix_plans_the_relation_wrong_in_most_relation_scenes():
    from encoder_graded_prototype import relation_mix_errors

    from training.ml.world.errors import RELATION_ERRORS

    rng = np.random.default_rng(0)
    plans = [relation_mix_errors("spatial", rng) for _ in range(2000)]
    with_relation = np.mean([any(e in RELATION_ERRORS for e in plan) for plan in plans])
    assert 0.66 < with_relation < 0.74
    assert max(len(plan) for plan in plans) == 3 and min(len(plan) for plan in plans) == 0


def test_a_binding_pair_is_one_caption_with_a_correct_render_and_a_swapped_or_misplaced_one():
    from encoder_graded_prototype import binding_pair

    from training.ml.world.encoder import encoder_prompt_specs

    specs = encoder_prompt_specs(held_out=False)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        _, images, correct = binding_pair(specs, rng, 32)
        assert len(images) == 2 and correct in (0, 1) and images[0].shape == (32, 32, 3)
        assert not np.array_equal(images[0], images[1])
        seen.add(correct)
    assert seen == {0, 1}  # the correct render is not always first


def test_object_words_are_each_objects_attributes_and_shape_in_caption_order():
    from encoder_graded_prototype import object_words

    assert object_words("a dotted circle inside a blue triangle", 2) == [[1, 2], [5, 6]]
    assert object_words("a small red circle to the left of a square", 2) == [[1, 2, 3], [9]]
    with pytest.raises(ValueError, match="expected 2 objects"):
        object_words("a red circle", 2)


def test_grounding_targets_are_distributions_over_each_objects_own_cells():
    from encoder_graded_prototype import grounding_example

    from training.ml.world.encoder import encoder_prompt_specs

    specs = encoder_prompt_specs(held_out=False)
    rng = np.random.default_rng(1)
    for _ in range(10):
        image, caption, targets = grounding_example(specs, rng, 32, 4)
        assert image.shape == (32, 32, 3) and len(targets) == 2
        words = caption.split()
        for positions, cells in targets:
            assert cells.shape == (64,) and abs(cells.sum() - 1) < 1e-6 and cells.min() >= 0
            assert words[positions[-1] - 1] in ("circle", "square", "triangle", "diamond")
        # Two different objects: their targets are not the same cells.
        assert not np.allclose(targets[0][1], targets[1][1])
