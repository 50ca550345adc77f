"""Which caption facts does the base model get wrong, against the errors the world encoder is pretrained on?

Per subcategory: ``--prompts`` training-split prompts × ``--seeds`` samples of p_0 (the committed base,
guidance 3, ``--steps`` DDIM steps) read by the oracle — here an *instrument* on a measurement set, never a
training label — and, beside them, the scenes the encoder's pretraining plans for the same prompts
(``training.ml.world.encoder.draw_example``'s recipe: a share of scenes with one or two planned
errors, a share of captions replaced by a one-edit hard negative), the caption's facts read from the
plan. For each fact kind (present, colour, shape, texture, size, relation, no extra object) the share of
images where it is violated, and the distribution of the number of violated facts. Where the two columns
differ is what the encoder never saw.

    .venv/bin/python bench/error_repertoire.py [--prompts 24] [--seeds 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import active_selection  # noqa: E402

from training.ml.algorithm1.steps import hash_rank  # noqa: E402
from training.ml.world.encoder import EncoderConfig, hard_negative, plan_errors  # noqa: E402
from training.ml.world.errors import planned_scene  # noqa: E402
from training.ml.world.facts import prompt_facts, scene_objects  # noqa: E402
from training.ml.world.grammar import parse_prompt  # noqa: E402
from training.ml.world.layout import LayoutError  # noqa: E402
from training.ml.world.model import PRETRAINED_DIR, WorldDiffusionModel  # noqa: E402
from training.ml.world.oracle import oracle_report  # noqa: E402
from training.ml.world.pretrain import training_prompts  # noqa: E402
from training.ml.world.vocab import SUBCATEGORIES  # noqa: E402

KINDS = ("present", "color", "shape", "texture", "size", "relation", "no_extra")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=str(PRETRAINED_DIR))
    p.add_argument("--prompts", type=int, default=24, help="per subcategory")
    p.add_argument("--seeds", type=int, default=4, help="samples (and planned scenes) per prompt")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "error_repertoire.json"))
    p.add_argument("--threads", type=int, default=1)
    return p


def tally(verdicts: list[dict[str, bool]]) -> dict[str, Any]:
    """Share of images violating each fact kind (over images whose prompt states it), and the count mix."""
    stated: Counter[str] = Counter()
    violated: Counter[str] = Counter()
    counts: Counter[int] = Counter()
    for facts in verdicts:
        wrong = 0
        for key, held in facts.items():
            kind = key.split(":")[0]
            stated[kind] += 1
            if not held:
                violated[kind] += 1
                wrong += 1
        counts[min(wrong, 3)] += 1
    n = len(verdicts)
    return {
        "images": n,
        "violated_share": {k: round(violated[k] / stated[k], 3) for k in KINDS if stated[k]},
        "violated_facts": {("3+" if k == 3 else str(k)): round(counts[k] / n, 3) for k in sorted(counts)},
    }


def planned_verdicts(prompts: list[str], seeds: int, rng: np.random.Generator, sub: str) -> list[dict]:
    """The encoder pretraining's examples for these prompts (its planned-error and hard-negative-caption
    shares), each caption's facts read from the planned scene."""
    config = EncoderConfig()
    out = []
    for text in prompts:
        spec = parse_prompt(text)
        for _ in range(seeds):
            errors = plan_errors(sub, rng, config)
            try:
                scene = planned_scene(spec, rng, errors)
            except LayoutError:
                scene = planned_scene(spec, rng)
            caption = hard_negative(spec, rng) if rng.random() < config.caption_negative_share else spec
            out.append(prompt_facts(caption, scene_objects(scene), touch_px=1))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = WorldDiffusionModel.from_pretrained(args.base).eval()
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {}
    for sub in SUBCATEGORIES:
        prompts = hash_rank(training_prompts()[sub], "error-repertoire")[: args.prompts]
        texts = [p for p in prompts for _ in range(args.seeds)]
        seeds = [s for _ in prompts for s in range(args.seeds)]
        images = model.sample(texts, seeds, steps=args.steps, guidance=args.guidance)
        sampled = [oracle_report(text, image)["facts"] for text, image in zip(texts, images, strict=True)]
        result[sub] = {
            "base_samples": tally(sampled),
            "encoder_pretraining_scenes": tally(planned_verdicts(prompts, args.seeds, rng, sub)),
        }
        print(json.dumps({sub: result[sub]}), flush=True)
    return active_selection.write_result(args, started, subcategories=result)


if __name__ == "__main__":
    main()
