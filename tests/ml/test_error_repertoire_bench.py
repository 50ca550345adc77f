"""bench/error_repertoire.py end to end at toy size (the real measurement is recorded in BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest

from tests.ml.bench_run import run_bench
from training.ml.world.vocab import SUBCATEGORIES

pytestmark = pytest.mark.slow


def test_the_repertoire_bench_tallies_violated_facts_of_samples_and_of_pretraining_scenes(tmp_path):
    out = tmp_path / "repertoire.json"
    run_bench("error_repertoire.py", "--prompts", "2", "--seeds", "2", "--steps", "2", "--out", str(out))
    result = json.loads(out.read_text())["subcategories"]
    assert set(result) == set(SUBCATEGORIES)
    for sub, sides in result.items():
        for side in ("base_samples", "encoder_pretraining_scenes"):
            tally = sides[side]
            assert tally["images"] == 4, (sub, side)
            assert "present" in tally["violated_share"] and "no_extra" in tally["violated_share"]
            assert all(0 <= v <= 1 for v in tally["violated_share"].values())
            assert sum(tally["violated_facts"].values()) == pytest.approx(1.0, abs=0.01)
    # Relations are facts of the two relation subcategories only.
    assert "relation" in result["spatial"]["base_samples"]["violated_share"]
    assert "relation" not in result["color"]["base_samples"]["violated_share"]
