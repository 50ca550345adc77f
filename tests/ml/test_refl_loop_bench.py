"""bench/refl_loop.py end to end at toy size: the learning-validity measurement keeps working as code moves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_learning_validity_bench_writes_its_summary_with_the_gate_baselines_and_hacking_stats(tmp_path):
    tag = f"_pytest{os.getpid()}"
    args = "--iterations 1 --prompts-per-category 6 --gallery-seeds 1 --reward-epochs 1 --refl-steps 2"
    args += " --val-per-sub 1 --sample-prompts 6 --eval-per-sub 2 --eval-seeds 1 --guard-every 1 --steps 4"
    args += " --bootstrap 50 --own-groups-per-category 2 --own-group-size 3 --gate require --guidance 3"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = ROOT / "bench" / "out"
    try:
        subprocess.run(
            [
                sys.executable,
                "bench/refl_loop.py",
                "--loop-dir",
                str(tmp_path / "loop"),
                "--tag",
                tag,
                *args.split(),
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
        summary = json.loads((out / f"refl_loop{tag}_learning_validity.json").read_text())
    finally:
        for path in out.glob(f"refl_loop{tag}*"):
            path.unlink()
    assert set(summary["rm_own_accuracy"]) == {"attribute_binding", "spatial", "non_spatial"}
    assert all(0 <= v <= 1 for v in summary["rm_own_accuracy_ci_low"].values() if v is not None)
    # Beside each accuracy, what the oracle itself reaches on the same pairs (the panel's coin flips).
    for key in ("rm_own_ceiling", "rm_gallery_ceiling", "rm_gallery_accuracy"):
        assert set(summary[key]) == {"attribute_binding", "spatial", "non_spatial"}
        assert all(0 <= v <= 1 for v in summary[key].values() if v is not None)
    assert all(isinstance(n, int) for n in summary["rm_gallery_pairs"].values())
    assert summary["best_of_4_gain"] is not None
    runs = {row["run"] for row in summary["baselines"]}
    assert {"p0 best-of-4", "p0 oracle best-of-4"} <= runs
    assert [row["k"] for row in summary["iterations"]] == [0, 0, 0, 1, 1, 1]
    for row in summary["iterations"] + summary["baselines"]:
        assert row["ci_low"] <= row["ci_high"]
        assert set(row["hacking"]) == {"extra_objects", "background_tint", "stripes"}
    # The oracle choosing among four candidates is the ceiling of any reranker.
    ceiling = {r["category"]: r["oracle"] for r in summary["baselines"] if r["run"] == "p0 oracle best-of-4"}
    base = {r["category"]: r["oracle"] for r in summary["iterations"] if r["k"] == 0}
    assert all(ceiling[c] >= base[c] for c in base)
