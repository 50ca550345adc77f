"""Which single composition errors can the pretrained world encoder tell apart from a correct scene?

For held-out captions of every subcategory, pairs of two renders of the *same* caption: one planned
correctly (truth score 1), one with exactly one of the world's deliberate errors (``errors.ERRORS_FOR``:
swapped or changed attribute, wrong shape, dropped or extra object, reversed or random relation; truth
score < 1). A pair is ranked right when the encoder's zero-shot ITM margin (``encoder_zero_shot.ItmScorer``)
is higher for the correct render. Per error kind and render style, the share ranked right, with a 95 %
Wilson interval. This is the within-caption question a reward model is asked on the model's own samples,
asked where the answer is known by construction; nothing here is a model sample or an oracle reading.

    .venv/bin/python bench/encoder_error_pairs.py [--encoder DIR] [--pairs 60] [--styles clean blob]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import active_selection  # noqa: E402
from encoder_zero_shot import ItmScorer  # noqa: E402

from training.ml.world.encoder import (  # noqa: E402
    ENCODER_DIR,
    STYLES,
    encoder_prompt_specs,
    error_pair,
    render_style,
)
from training.ml.world.errors import ERRORS_FOR  # noqa: E402
from training.ml.world.scene import render_scene_array  # noqa: E402
from training.ml.world.vocab import SUBCATEGORIES  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default=str(ENCODER_DIR))
    p.add_argument("--pairs", type=int, default=60, help="pairs per subcategory, error kind and style")
    p.add_argument("--styles", nargs="+", default=["clean", "blob"], choices=STYLES)
    p.add_argument("--subcategories", nargs="+", default=list(SUBCATEGORIES), choices=SUBCATEGORIES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "encoder_error_pairs.json"))
    p.add_argument("--threads", type=int, default=1)
    return p


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    scorer = ItmScorer(args.encoder)
    specs = encoder_prompt_specs(held_out=True)
    rng = np.random.default_rng(args.seed)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for sub in args.subcategories:
        results[sub] = {}
        for error in ERRORS_FOR[sub]:
            results[sub][error] = {}
            for style in args.styles:
                right_count, n, tries = 0.0, 0, 0
                while n < args.pairs and tries < 20 * args.pairs:
                    tries += 1
                    spec = specs[sub][int(rng.integers(len(specs[sub])))]
                    pair = error_pair(spec, error, rng)
                    if pair is None:
                        continue
                    images = [render_style(render_scene_array(scene, 32)[0], style, rng) for scene in pair]
                    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
                    good, bad = scorer(spec.text, tensor)
                    right_count += 1.0 if good > bad else 0.5 if good == bad else 0.0
                    n += 1
                low, high = wilson(right_count, n)
                results[sub][error][style] = {
                    "accuracy": right_count / max(1, n),
                    "low": low,
                    "high": high,
                    "n": n,
                }
            print(
                sub, error, {s: round(v["accuracy"], 3) for s, v in results[sub][error].items()}, flush=True
            )
    return active_selection.write_result(args, started, subcategories=results)


if __name__ == "__main__":
    main()
