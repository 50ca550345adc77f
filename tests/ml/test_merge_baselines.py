"""bench/merge_baselines.py: another run's baselines join a summary only when both evaluated the same p_0."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from merge_baselines import merge  # noqa: E402


def summary(p0: float, p1: float, baselines=()) -> dict:
    rows = [
        {"k": k, "run": f"iteration {k}", "category": "spatial", "oracle": value}
        for k, value in ((0, p0), (1, p1))
    ]
    return {"guidance": 3.0, "iterations": rows, "baselines": list(baselines)}


def test_the_other_runs_baselines_and_iterations_are_added_with_their_source():
    best_of = {"k": None, "run": "p0 best-of-4", "category": "spatial", "oracle": 0.62}
    dpo, refl = summary(0.57, 0.60), summary(0.57, 0.54, [best_of])
    merged = merge(dpo, refl, "ReFL", "lv.json")
    assert merged["iterations"] == dpo["iterations"]
    assert [(r["run"], r["oracle"], r["from"]) for r in merged["baselines"]] == [
        ("p0 best-of-4", 0.62, "lv.json"),
        ("ReFL p_1", 0.54, "lv.json"),
    ]
    # Merging again replaces what came from that source instead of doubling it.
    assert merge(merged, refl, "ReFL", "lv.json")["baselines"] == merged["baselines"]


def test_runs_that_did_not_evaluate_the_same_p0_are_refused():
    with pytest.raises(SystemExit, match="not the same p_0 evaluation"):
        merge(summary(0.57, 0.60), summary(0.58, 0.54), "ReFL", "lv.json")
    other_guidance = {**summary(0.57, 0.54), "guidance": 1.0}
    with pytest.raises(SystemExit, match="different guidance"):
        merge(summary(0.57, 0.60), other_guidance, "ReFL", "lv.json")


def test_a_summary_without_best_of_4_takes_the_other_runs_and_keeps_its_own_otherwise():
    dpo = {**summary(0.57, 0.60), "best_of_4_gain": None}
    control = {**summary(0.57, 0.571), "best_of_4_gain": 0.04}
    merged = merge(dpo, control, "control", "control.json")
    assert (merged["best_of_4_gain"], merged["best_of_4_gain_from"]) == (0.04, "control.json")
    own = merge({**dpo, "best_of_4_gain": 0.05}, control, "control", "control.json")
    assert own["best_of_4_gain"] == 0.05 and "best_of_4_gain_from" not in own
