"""bench/encoder_zero_shot.py end to end at toy size: the zero-shot ITM measurement keeps working as the code
moves (the real measurement is recorded in BENCHMARKS.md)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import ROOT
from tests.ml.bench_run import run_bench
from training.ml.world.encoder import ENCODER_DIR

pytestmark = pytest.mark.slow
sys.path.insert(0, str(ROOT / "bench"))


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
    # Every strict pair falls in exactly one kind of oracle difference.
    by_kind = row["by_difference"][str(ENCODER_DIR)]
    assert sum(kind["itm"]["pairs"] for kind in by_kind.values()) == itm["pairs"]


def test_a_pair_is_named_after_the_one_kind_of_fact_its_images_differ_in():
    from encoder_zero_shot import difference_kind

    def report(n_extra=0, **facts):
        base = {"present:circle": True, "color:circle": True, "relation": True, "no_extra": n_extra == 0}
        return {"facts": {**base, **facts}, "n_extra": n_extra}

    assert difference_kind(report(), report(**{"color:circle": False})) == "attribute"
    assert difference_kind(report(), report(relation=False)) == "relation"
    assert difference_kind(report(), report(n_extra=2)) == "extra"
    assert difference_kind(report(n_extra=1), report(n_extra=2)) == "extra"
    assert difference_kind(report(), report(**{"present:circle": False})) == "present"
    assert difference_kind(report(), report(relation=False, n_extra=1)) == "several"
    assert difference_kind(report(), report()) == "none"
