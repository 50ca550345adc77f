"""bench/active_selection.py end to end at toy size: the active-selection measurement keeps working as the
code moves (the real measurement is recorded in BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest

from tests.ml.bench_run import run_bench
from training.ml.world.model import PRETRAINED_DIR

pytestmark = pytest.mark.slow


def test_the_active_selection_bench_writes_learning_curves_per_policy_and_the_rankings_ratio(tmp_path):
    out = tmp_path / "active_selection.json"
    args = "--seeds 2 --pool-prompts 8 --eval-prompts 4 --group-size 3 --annotators 2 --initial-tasks 2"
    args += " --batch-tasks 2 --rounds 2 --reward-epochs 1 --reward-hidden 32 --reward-layers 1"
    args += " --sampling-steps 4 --random-share 0.5"
    run_bench(
        "active_selection.py",
        "--base",
        str(PRETRAINED_DIR),
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(out),
        *args.split(),
    )
    summary = json.loads(out.read_text())
    assert "rankings_ratio" in summary and summary["complete"] is True
    assert len(summary["load_average"]) == 3
    spatial = summary["categories"]["spatial"]
    assert spatial["seeds"] == 2
    assert set(spatial["mean"]) == {"random", "uncertainty", "mix"}
    assert (
        set(spatial["rankings_ratio"]) == set(spatial["rankings_ratio_unqualified"]) == {"uncertainty", "mix"}
    )
    for policy, seeds in spatial["per_seed"].items():
        assert len(seeds) == 2
        for curve in seeds:
            # Two annotators per task: 2 initial tasks, then 2 more per round.
            assert [p["rankings"] for p in curve] == [4, 8, 12]
            assert all(p["ci_low"] <= p["accuracy"] <= p["ci_high"] and p["eval_pairs"] > 0 for p in curve)
        for point in spatial["mean"][policy]:
            assert point["low"] <= point["mean"] <= point["high"]
    # The oracle's agreement with the panel on the same held-out pairs, once per seed, in [0, 1].
    assert len(spatial["panel_ceiling"]) == 2
    for ceiling, curve in zip(spatial["panel_ceiling"], spatial["per_seed"]["random"], strict=True):
        assert ceiling["pairs"] == curve[0]["eval_pairs"]
        assert ceiling["low"] <= ceiling["accuracy"] <= ceiling["high"]
    # Every policy starts from the same randomly chosen tasks, so the same reward model and accuracy.
    firsts = {tuple(curve[0]["accuracy"] for curve in seeds) for seeds in spatial["per_seed"].values()}
    assert len(firsts) == 1
