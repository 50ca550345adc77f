"""bench/reward_fit_sweep.py end to end at toy size: one sampled data set, one reward model per setting, each
measured on the same held-out panel pairs (the real measurement is recorded in BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest

from tests.ml.bench_run import run_bench

pytestmark = pytest.mark.slow


def test_the_fit_sweep_trains_one_reward_model_per_setting_and_measures_each_on_the_same_pairs(tmp_path):
    out = tmp_path / "sweep.json"
    args = "--pool-prompts 16 --eval-prompts 3 --group-size 3 --sampling-steps 4 --settings 1:1e-4 2:1e-3"
    run_bench("reward_fit_sweep.py", "--work-dir", str(tmp_path / "w"), "--out", str(out), *args.split())
    rows = json.loads(out.read_text())["rows"]
    assert [(r["epochs"], r["lr"]) for r in rows] == [(1, 1e-4), (2, 1e-3)]
    assert len({r["eval_pairs"] for r in rows}) == 1 and rows[0]["eval_pairs"] > 0
    for row in rows:
        assert row["ci_low"] <= row["own_accuracy"] <= row["ci_high"]
        # One validation point per epoch: the curve that tells under- from over-fitting.
        assert len(row["val_curve"]) == row["epochs"]
