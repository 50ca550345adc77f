"""bench/encoder_error_pairs.py: its interval by hand, its pairs by construction, the bench at toy size."""

from __future__ import annotations

import json
import math
import sys

import pytest

from tests.conftest import ROOT
from tests.ml.bench_run import run_bench

sys.path.insert(0, str(ROOT / "bench"))


def test_the_wilson_interval_matches_hand_computed_values():
    from encoder_error_pairs import wilson

    low, high = wilson(50, 100)
    assert math.isclose(low, 0.4038, abs_tol=1e-4) and math.isclose(high, 0.5962, abs_tol=1e-4)
    low, high = wilson(10, 10)
    assert math.isclose(low, 0.7225, abs_tol=1e-4) and high == pytest.approx(1.0)


@pytest.mark.slow
def test_the_error_pair_bench_scores_each_error_kind_and_style(tmp_path):
    out = tmp_path / "pairs.json"
    run_bench(
        "encoder_error_pairs.py",
        *["--pairs", "3", "--subcategories", "spatial", "--styles", "clean", "blob", "--out"],
        str(out),
    )
    rows = json.loads(out.read_text())["subcategories"]["spatial"]
    assert {"reverse", "random_layout", "swap_color", "drop", "extra"} <= set(rows)
    for styles in rows.values():
        assert set(styles) == {"clean", "blob"}
        for cell in styles.values():
            assert cell["n"] == 3 and cell["low"] <= cell["accuracy"] <= cell["high"]
