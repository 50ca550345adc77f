"""bench/refl_loop.py --objective dpo at toy size: the DPO learning-validity run writes the ReFL run's keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_dpo_bench_writes_bench_results_keys_like_the_refl_learning_validity_summary(tmp_path):
    tag = f"_pytest_dpo{os.getpid()}"
    args = "--iterations 1 --prompts-per-category 6 --gallery-seeds 1 --reward-epochs 1 --refl-steps 3"
    args += " --val-per-sub 1 --sample-prompts 6 --eval-per-sub 2 --eval-seeds 1 --guard-every 2 --steps 4"
    args += " --bootstrap 50 --own-groups-per-category 2 --own-group-size 3 --guidance 3 --refl-lr 1e-4"
    args += " --objective dpo --dpo-pair-source own --dpo-beta 500 --skip-baselines"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = ROOT / "bench" / "out"
    target = tmp_path / "results" / "dpo.json"
    try:
        result = subprocess.run(
            [
                sys.executable,
                "bench/refl_loop.py",
                "--loop-dir",
                str(tmp_path / "loop"),
                "--tag",
                tag,
                "--summary",
                str(target),
                *args.split(),
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=900,
        )
        summary = json.loads((out / f"refl_loop{tag}_learning_validity.json").read_text())
    finally:
        for path in out.glob(f"refl_loop{tag}*"):
            path.unlink()
    assert json.loads(target.read_text()) == summary
    # Every key of the committed ReFL learning-validity summary (later runs' summaries add keys: the oracle
    # reference of the reward models), row for row.
    refl = json.loads((ROOT / "bench" / "results" / "refl_loop_gate_learning_validity.json").read_text())
    assert set(refl) | {"objective", "rm_own_ceiling", "rm_gallery_ceiling"} <= set(summary)
    assert summary["objective"] == "dpo"
    assert [set(row) for row in summary["iterations"]] == [set(refl["iterations"][0])] * 6
    assert [row["k"] for row in summary["iterations"]] == [0, 0, 0, 1, 1, 1]
    for row in summary["iterations"]:
        assert row["ci_low"] <= row["ci_high"]
        assert set(row["hacking"]) == {"extra_objects", "background_tint", "stripes"}
    # p_1 is the DPO checkpoint, trained on the panel's rankings of p_0's own samples.
    metrics = json.loads((tmp_path / "loop" / "iter_0" / "metrics.json").read_text())
    assert metrics["objective"] == "dpo" and metrics["refl"]["objective"] == "dpo"
    # Two groups of three per category, three categories: at most 6 × C(3, 2) pairs, and at least one
    # prompt held out. Its pairs are evaluated unless the panel tied them all: how many ties there are
    # depends on the samples, which depend on the CPU's float path, so a count of zero is possible.
    dpo = metrics["refl"]
    assert dpo["pairs"] > 0 and dpo["heldout_prompts"] >= 1
    assert dpo["pairs"] + dpo["heldout_pairs"] <= 6 * 3
    assert metrics["refl"]["steps"] == 3
    assert "Diffusion-DPO per iteration" in result.stdout
