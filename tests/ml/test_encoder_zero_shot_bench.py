"""bench/encoder_zero_shot.py end to end at toy size: the zero-shot ITM measurement keeps working as the code
moves (the real measurement is recorded in BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest

from tests.ml.bench_run import run_bench
from training.ml.world.encoder import ENCODER_DIR

pytestmark = pytest.mark.slow


def test_the_zero_shot_bench_scores_the_same_held_out_panel_pairs_with_the_itm_head_and_the_oracle(tmp_path):
    out = tmp_path / "zero_shot.json"
    args = (
        "--categories spatial --seeds 1 --pool-prompts 2 --eval-prompts 3 --group-size 3 --sampling-steps 4"
    )
    run_bench("encoder_zero_shot.py", "--work-dir", str(tmp_path / "work"), "--out", str(out), *args.split())
    summary = json.loads(out.read_text())
    (row,) = summary["categories"]["spatial"]
    itm = row["itm"][str(ENCODER_DIR)]
    ceiling = row["panel_ceiling"]
    # Three groups of three samples: at most 3 strict panel pairs each, both scorers judged on the same ones.
    assert 0 < itm["pairs"] == ceiling["pairs"] <= 9 and itm["prompts"] == ceiling["prompts"] <= 3
    for accuracy in (itm, ceiling):
        assert accuracy["low"] <= accuracy["accuracy"] <= accuracy["high"]
