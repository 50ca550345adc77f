"""bench/world_basemodel.py end to end at toy size (the real measurement is recorded in BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest

from tests.ml.bench_run import run_bench
from training.ml.world.model import PRETRAINED_DIR
from training.ml.world.vocab import REWARD_CATEGORIES

pytestmark = pytest.mark.slow


def test_the_base_model_bench_compares_two_models_on_the_same_noise(tmp_path):
    out = tmp_path / "base.json"
    run_bench(
        "world_basemodel.py",
        "--compare",
        str(PRETRAINED_DIR),
        "--prompts",
        "1",
        "--seeds",
        "2",
        "--steps",
        "2",
        "--repro-steps",
        "0",
        "--out",
        str(out),
    )
    record = json.loads(out.read_text())
    assert record["compare"] == str(PRETRAINED_DIR)
    for guidance in ("1", "3"):
        entry = record["guidance"][guidance]
        assert entry["model"]["images"] == entry["compare"]["images"] == 2 * record["prompts"]
        assert set(entry["model"]["by_category"]) == set(REWARD_CATEGORIES)
        # The same model against itself on the same noise: every paired difference is exactly zero.
        for scope, diff in entry["difference"].items():
            assert diff == {"diff": 0.0, "lo": 0.0, "hi": 0.0}, scope
        assert entry["model"]["facts"] == entry["compare"]["facts"]
