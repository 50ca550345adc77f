"""bench/panel_ties.py: its pair counting by hand, and the bench end to end at toy size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import panel_ties  # noqa: E402


def test_pair_figures_count_coin_flips_and_ties_against_the_oracle():
    # [a, b] tied, then c, then d; the oracle: a = b = 1, c = 1 (a coin flip against a and b), d = 0.5.
    oracle = {1: 1.0, 2: 1.0, 3: 1.0, 4: 0.5}
    figures = panel_ties.pair_figures([[1, 2], [3], [4]], oracle)
    assert figures == {
        "strict": 5,  # a>c, b>c, a>d, b>d, c>d
        "strict_oracle_ties": 2,
        "oracle_right": 4.0,  # two coin flips at one half, three right
        "tied": 1,
        "tied_oracle_differs": 0,
    }
    assert panel_ties.pair_figures([[4, 1]], oracle)["tied_oracle_differs"] == 1
    assert panel_ties.pair_figures([[4], [1]], oracle)["oracle_right"] == 0.0


def test_the_bench_writes_every_setting_per_category(tmp_path):
    out = tmp_path / "ties.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "panel_ties.py"),
            "--prompts",
            "3",
            "--thresholds",
            "0",
            "0.1",
            "--methods",
            "kemeny",
            "--out",
            str(out),
        ],
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
    )
    result = json.loads(out.read_text())
    assert set(result["categories"]) == {"attribute_binding", "spatial", "non_spatial"}
    for rows in result["categories"].values():
        assert set(rows) == {"kemeny/0", "kemeny/0.1"}
        # Three groups of six pictures: 15 pairs each, every one strict or tied.
        assert all(row["strict"] + row["tied"] == 45 for row in rows.values())
        assert all(0.0 <= row["ceiling"] <= 1.0 for row in rows.values())
