"""What a panel whose experts may mark ties does to the consensus pairs the reward models and the gate see.

The world's simulated experts perceive oracle score plus personal noise. By default they never tie, so two
pictures the oracle scores exactly alike get ordered by noise, and the consensus keeps a 4-1 or 5-0 split of
such coin flips as a strict pair (``tie_margin`` only ties 3-2 splits). With ``expert_tie_threshold`` each
expert ties neighbours it perceives within the threshold (``SimulatedAnnotator.rank_groups``), as an expert
may in a project that allows ties.

For groups of the six gallery generators' pictures of grammar prompts (per category), every setting ranks
the same groups through the loop's own ``training.ml.loop.expert_ranking`` and reports: strict pairs, the
share of them the oracle scores exactly alike (coin flips), the oracle's accuracy on them (the ceiling any
scorer can reach: coin flips count one half), tied pairs, and how many of those the oracle would separate.
Measured only: nothing trains on the oracle.

    .venv/bin/python bench/panel_ties.py [--prompts 60] [--thresholds 0 0.05 0.1] [--methods borda kemeny]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rankmath.pairs import pairs_from_ordering  # noqa: E402
from training.ml.loop import LoopConfig, RankedData, expert_ranking  # noqa: E402
from training.ml.world import generate_prompts, oracle_score  # noqa: E402
from training.ml.world.gallery import GALLERY_GENERATORS  # noqa: E402

CATEGORIES = {
    "attribute_binding": ("color", "shape", "texture"),
    "spatial": ("spatial",),
    "non_spatial": ("non_spatial",),
}
NAMES = ("flux", "sd3", "sdxl", "sd15", "rpg", "instancediffusion")
FIGURES = ("strict", "strict_oracle_ties", "oracle_right", "tied", "tied_oracle_differs")


def pair_figures(ordering: list[list[int]], oracle: dict[int, float]) -> dict[str, float]:
    """Counts for one consensus ordering (tie groups, best first) against the oracle's scores."""
    out = dict.fromkeys(FIGURES, 0)
    for pair in pairs_from_ordering(ordering, ties="half"):
        winner, loser = oracle[pair.winner], oracle[pair.loser]
        if pair.label == 0.5:
            out["tied"] += 1
            out["tied_oracle_differs"] += winner != loser
        else:
            out["strict"] += 1
            out["strict_oracle_ties"] += winner == loser
            out["oracle_right"] += 0.5 if winner == loser else float(winner > loser)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=60, help="prompts per category (one group each)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.05, 0.1])
    parser.add_argument("--methods", nargs="+", default=["borda", "kemeny"])
    parser.add_argument("--tie-margin", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.time()
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = RankedData(Path(tmp))
        for category, subs in CATEGORIES.items():
            groups = []
            for sub in subs:
                for i, prompt in enumerate(generate_prompts(sub, args.prompts // len(subs), seed=args.seed)):
                    ids = [
                        data.add_image(
                            GALLERY_GENERATORS[name].generate_array(prompt, 6 * i + k, 32), "gallery", 0
                        )
                        for k, name in enumerate(NAMES)
                    ]
                    # The oracle reads what the panel reads: the stored 8-bit picture.
                    oracle = {j: oracle_score(prompt, data.load([j])[0]) for j in ids}
                    groups.append((prompt, ids, oracle))
            results[category] = {}
            for method, threshold in itertools.product(args.methods, args.thresholds):
                config = LoopConfig(
                    output_dir=tmp,
                    consensus_method=method,
                    tie_margin=args.tie_margin,
                    expert_tie_threshold=threshold,
                )
                total = dict.fromkeys(FIGURES, 0)
                for prompt, ids, oracle in groups:
                    for key, value in pair_figures(expert_ranking(config, data, prompt, ids), oracle).items():
                        total[key] += value
                row = {
                    **total,
                    "coin_flip_share": total["strict_oracle_ties"] / max(1, total["strict"]),
                    "ceiling": total["oracle_right"] / max(1, total["strict"]),
                }
                results[category][f"{method}/{threshold:g}"] = row
                print(
                    f"{category:18s} {method:13s} threshold {threshold:<5g} strict {row['strict']:4d}  "
                    f"coin flips {row['coin_flip_share']:.3f}  ceiling {row['ceiling']:.3f}  "
                    f"tied {row['tied']:4d} (oracle differs {row['tied_oracle_differs']})",
                    flush=True,
                )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "what": "consensus pairs of gallery groups under panels that may or may not mark ties",
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "groups_per_category": args.prompts,
                    "seconds": round(time.time() - started, 1),
                    "categories": results,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
