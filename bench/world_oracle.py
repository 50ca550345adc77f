"""Oracle accuracy, fact by fact, on clean and degraded renders of correct and deliberately wrong scenes.

Usage: .venv/bin/python bench/world_oracle.py [--n 1000] [--seed 0]
For every subcategory, renders n clean and n degraded images (half correct, half with 1-2 deliberate
errors: swapped/changed attributes, wrong shape, dropped or extra object, reversed or random relation)
and prints the share of prompt facts (object present, attribute, relation, no extra object) on which the
oracle's verdict matches the scene truth, plus the mean oracle score of correct vs wrong scenes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.ml.world.oracle_eval import measure_oracle  # noqa: E402
from training.ml.world.vocab import REWARD_CATEGORIES, REWARD_CATEGORY, SUBCATEGORIES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000, help="images per subcategory and condition")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    print(
        f"{'subcategory':12s} {'renders':8s} {'images':>6s} {'facts':>6s} {'accuracy':>8s}  "
        f"{'score ok':>8s} {'score bad':>9s}  per fact kind"
    )
    totals: dict[tuple[str, bool], list[int]] = {}
    for degraded in (False, True):
        for subcategory in SUBCATEGORIES:
            result = measure_oracle(subcategory, args.n, args.seed, degraded)
            kinds = " ".join(f"{k}={v:.3f}" for k, v in result.fact_accuracy().items())
            print(
                f"{subcategory:12s} {'degraded' if degraded else 'clean':8s} {result.n_images:6d} "
                f"{result.total:6d} {result.accuracy:8.4f}  {np.mean(result.score_correct):8.3f} "
                f"{np.mean(result.score_wrong):9.3f}  {kinds}"
            )
            key = (REWARD_CATEGORY[subcategory], degraded)
            agree, total = totals.get(key, [0, 0])
            totals[key] = [agree + result.agree, total + result.total]
            misses = Counter(key.split(":")[0] for _, key, _ in result.failures)
            if misses:
                print(f"{'':12s} misses by fact kind: {dict(misses)}")
    print()
    print("per reward category (facts pooled over its subcategories):")
    for category in REWARD_CATEGORIES:
        cells = []
        for degraded in (False, True):
            agree, total = totals[(category, degraded)]
            cells.append(f"{'degraded' if degraded else 'clean'} {agree / total:.4f} ({total} facts)")
        print(f"  {category:18s} " + "   ".join(cells))
    print(f"elapsed {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
