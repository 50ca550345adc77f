"""bench/refl_loop.py --objective raft and bench/raft_sweep.py at toy size: one loop run, then the sweep on
its reward models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=900
    )


def test_a_raft_loop_run_trains_on_its_kept_samples_and_the_sweep_reuses_its_reward_models(tmp_path):
    tag = f"_pytest_raft{os.getpid()}"
    loop = tmp_path / "loop"
    args = "--iterations 1 --prompts-per-category 6 --gallery-seeds 1 --reward-epochs 1 --refl-steps 3"
    args += " --val-per-sub 1 --sample-prompts 6 --eval-per-sub 2 --eval-seeds 1 --guard-every 2 --steps 4"
    args += " --bootstrap 50 --own-groups-per-category 2 --own-group-size 3 --guidance 3 --refl-lr 1e-4"
    args += " --objective raft --raft-candidates 3 --feedback-prompts 2 --skip-baselines --gate off"
    out = ROOT / "bench" / "out"
    try:
        _run("bench/refl_loop.py", "--loop-dir", str(loop), "--tag", tag, *args.split())
    finally:
        for path in out.glob(f"refl_loop{tag}*"):
            path.unlink()
    metrics = json.loads((loop / "iter_0" / "metrics.json").read_text())
    assert metrics["objective"] == "raft" and metrics["refl"]["steps"] == 3
    # Two prompts per category, three categories: six kept samples, each the best of three.
    assert (metrics["refl"]["ranked_samples"], metrics["refl"]["candidates"]) == (6, 3)

    target = tmp_path / "sweep.json"
    sweep = _run(
        "bench/raft_sweep.py",
        "--loop-dir",
        str(loop),
        "--candidates",
        "2",
        "--prompts",
        "2",
        "--setting",
        "1e-4:2:4",
        "--setting",
        "2e-4:3:2",
        "--eval-per-sub",
        "1",
        "--eval-seeds",
        "1",
        "--best-of",
        "2",
        "--eval-train",
        "4",
        "--samples-cache",
        str(tmp_path / "draws.pt"),
        "--out",
        str(target),
    )
    result = json.loads(target.read_text())
    assert result["train_prompts"] == 6 and result["candidates"] == 2
    assert result["chosen_reward"] >= result["candidate_reward"]
    # Drawn at the loop's guidance unless told otherwise; what the kept samples are worth to the oracle.
    assert result["candidate_guidance"] == 3.0 and 0 <= result["kept_oracle"] <= 1
    assert [(s["learning_rate"], s["steps"], s["batch_size"]) for s in result["settings"]] == [
        (1e-4, 2, 4),
        (2e-4, 3, 2),
    ]
    for setting in result["settings"]:
        gain = setting["oracle_gain"]["overall"]
        assert gain["lo"] <= gain["diff"] <= gain["hi"]
        assert setting["oracle"]["overall"] == pytest.approx(result["p0"]["overall"] + gain["diff"])
    assert "best of 2" in sweep.stdout
    # The comparator on the same held-out images: best-of-2 reranking of p_0 by the same reward models.
    best = result["best_of_n"]
    assert best["n"] == 2
    assert best["oracle"]["overall"] == pytest.approx(
        result["p0"]["overall"] + best["oracle_gain"]["overall"]["diff"]
    )
    assert result["data"] == "kept" and (tmp_path / "draws.pt").exists()
    # Scored on the prompts it trained on too (four of the six, fresh noise), beside the held-out ones.
    assert result["train_eval_images"] == 4 and 0 <= result["p0_train"]["overall"] <= 1
    for setting in result["settings"]:
        gain = setting["train_oracle_gain"]["overall"]
        assert setting["train_oracle"]["overall"] == pytest.approx(
            result["p0_train"]["overall"] + gain["diff"]
        )
    assert "on the training prompts: gain" in sweep.stdout
    assert result["p0_fit_loss"] > 0 and all(s["fit_loss"] > 0 for s in result["settings"])

    # The same fine-tuning path with as many correct renders mixed in (reusing the saved draws).
    control = tmp_path / "control.json"
    args = ["--candidates", "2", "--prompts", "2", "--setting", "1e-4:2:4", "--data", "mixed"]
    args += ["--eval-per-sub", "1", "--eval-seeds", "1", "--samples-cache", str(tmp_path / "draws.pt")]
    mixed = _run("bench/raft_sweep.py", "--loop-dir", str(loop), *args, "--out", str(control))
    assert "mixed: 12 training images (6 correct renders)" in mixed.stdout
    renders = json.loads(control.read_text())
    assert renders["data"] == "mixed" and renders["train_prompts"] == 6 and len(renders["settings"]) == 1

    # Two kept samples per prompt, each the best of its own two candidates; the renders control draws nothing.
    repeated = tmp_path / "repeated.json"
    small = ["--candidates", "2", "--prompts", "2", "--setting", "1e-4:2:4", "--repeat", "2"]
    small += ["--eval-per-sub", "1", "--eval-seeds", "1"]
    _run("bench/raft_sweep.py", "--loop-dir", str(loop), *small, "--out", str(repeated))
    twice = json.loads(repeated.read_text())
    assert (twice["train_prompts"], twice["train_images"], twice["repeat"]) == (6, 12, 2)
    _run("bench/raft_sweep.py", "--loop-dir", str(loop), *small, "--data", "renders", "--out", str(repeated))
    control = json.loads(repeated.read_text())
    assert (control["train_images"], control["chosen_reward"], control["data"]) == (12, None, "renders")
    assert control["kept_oracle"] > twice["kept_oracle"]  # correct renders against p_0's drawings
    # Correct renders of the training prompts themselves, scored on two of them at two seeds each.
    own = ["--data", "prompt-renders", "--eval-train", "2", "--eval-train-seeds", "2"]
    _run("bench/raft_sweep.py", "--loop-dir", str(loop), *small, *own, "--out", str(repeated))
    perfect = json.loads(repeated.read_text())
    assert (perfect["train_images"], perfect["data"], perfect["kept_oracle"]) == (12, "prompt-renders", 1.0)
    assert perfect["train_eval_images"] == 4 and perfect["chosen_reward"] is None

    # Saved draws made at guidance 3 are not reused as if they had been drawn at another guidance.
    refused = subprocess.run(
        [sys.executable, "bench/raft_sweep.py", "--loop-dir", str(loop), *args, "--candidate-guidance", "1"],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert refused.returncode != 0 and "drawn at guidance 3.0, not 1.0" in refused.stderr
