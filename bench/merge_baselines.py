"""Put another run's baselines (and its iterations, as a named baseline) beside a learning-validity summary.

Two ``bench/refl_loop.py`` summaries are comparable row for row only when they evaluated the same held-out
images of the same p_0 on the same noise; this checks exactly that — the iteration-0 oracle per category
must agree to 1e-9 — and refuses otherwise. Then the other run's ``baselines`` (guidance-only, best-of-N,
oracle best-of-N, a control) and its iterations, renamed ``"<label> p_k"``, are added to ``baselines``
of the target, each row saying where it came from; a target without a ``best_of_4_gain`` takes the other
run's. Used to set Diffusion-DPO's run (``--skip-baselines``)
beside the ReFL run's baselines without sampling them again:

    .venv/bin/python bench/merge_baselines.py --into bench/results/dpo.json \\
        --source bench/results/learning_validity.json --label ReFL
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def base_oracle(summary: dict[str, Any]) -> dict[str, float]:
    return {r["category"]: r["oracle"] for r in summary["iterations"] if r["k"] == 0}


def merge(into: dict[str, Any], source: dict[str, Any], label: str, source_name: str) -> dict[str, Any]:
    mine, theirs = base_oracle(into), base_oracle(source)
    if mine.keys() != theirs.keys() or any(abs(mine[c] - theirs[c]) > 1e-9 for c in mine):
        raise SystemExit(f"not the same p_0 evaluation: {mine} vs {theirs}; the runs are not comparable")
    if into.get("guidance") != source.get("guidance"):
        raise SystemExit("the two runs used different guidance")
    kept = [r for r in into.get("baselines", []) if r.get("from") != source_name]
    added = [{**r, "from": source_name} for r in source.get("baselines", [])]
    added += [
        {**r, "run": f"{label} p_{r['k']}", "k": None, "from": source_name}
        for r in source["iterations"]
        if r["k"] != 0
    ]
    merged = {**into, "baselines": kept + added}
    # best_of_4_gain is a baseline's figure: a run made with --skip-baselines has none of its own, and on
    # the same p_0 evaluation the other run's is the one that belongs beside it.
    if into.get("best_of_4_gain") is None and source.get("best_of_4_gain") is not None:
        merged["best_of_4_gain"] = source["best_of_4_gain"]
        merged["best_of_4_gain_from"] = source_name
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--into", type=Path, required=True)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--label", required=True, help="name of the source run's iterations, e.g. ReFL")
    args = parser.parse_args()
    into = json.loads(args.into.read_text())
    merged = merge(into, json.loads(args.source.read_text()), args.label, str(args.source))
    args.into.write_text(json.dumps(merged, indent=1))
    print(f"{args.into}: {len(merged['baselines'])} baseline rows")


if __name__ == "__main__":
    main()
