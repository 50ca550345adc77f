"""Encoder passes and time per epoch: listwise (each image once per prompt) vs IterComp's pairwise batching.

Six images per prompt (the gallery size), all C(6,2) = 15 pairs per prompt, one training epoch of the
small from-scratch BLIP reward model in each mode, same prompts, same seed. Images are rendered by the
synthetic world (training/ml/world); pair labels come from a fixed random ranking per prompt — the
counts and timings do not depend on which image wins.

    .venv/bin/python bench/reward_passes.py [--prompts 120] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.ml.reward.config import RewardModelConfig, RewardTrainConfig, TextSpec, VisionSpec  # noqa: E402
from training.ml.reward.data import PairRecord, pil_to_tensor  # noqa: E402
from training.ml.reward.train import RewardData, train_reward_model  # noqa: E402
from training.ml.world.grammar import generate_prompts  # noqa: E402
from training.ml.world.layout import render_prompt  # noqa: E402

N_IMAGES = 6


def build_records(
    n_prompts: int, image_size: int, seed: int
) -> tuple[list[PairRecord], dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    images: dict[str, torch.Tensor] = {}
    records: list[PairRecord] = []
    for prompt_id, prompt in enumerate(generate_prompts("spatial", n_prompts, seed)):
        ids = [prompt_id * N_IMAGES + k for k in range(N_IMAGES)]
        for k, image_id in enumerate(ids):
            images[f"mem/{image_id}"] = pil_to_tensor(render_prompt(prompt, seed * 100 + k, size=image_size))
        rank = rng.permutation(N_IMAGES)
        for a, b in itertools.combinations(range(N_IMAGES), 2):
            w, lo = (a, b) if rank[a] < rank[b] else (b, a)
            records.append(
                PairRecord(
                    pair_id=len(records),
                    prompt_id=prompt_id,
                    prompt=prompt,
                    category="spatial",
                    subcategory="spatial",
                    split="train",
                    winner_id=ids[w],
                    winner_sha256="",
                    winner_path=f"mem/{ids[w]}",
                    loser_id=ids[lo],
                    loser_sha256="",
                    loser_path=f"mem/{ids[lo]}",
                )
            )
    return records, images


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=120)
    parser.add_argument("--batch-groups", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    records, images = build_records(args.prompts, args.image_size, args.seed)
    model = RewardModelConfig.small(
        "spatial",
        vision=VisionSpec(image_size=args.image_size, patch_size=args.image_size // 8),
        text=TextSpec(),
        freeze_fraction=0.0,
    )
    runs: dict[str, list[dict]] = {"listwise": [], "pairwise": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            # Alternate the order so CPU contention from other users hits both modes alike.
            for batching in ("listwise", "pairwise") if rep % 2 == 0 else ("pairwise", "listwise"):
                config = RewardTrainConfig(
                    model=model,
                    output_dir=str(Path(tmp) / batching),
                    epochs=1,
                    batch_groups=args.batch_groups,
                    lr=1e-4,
                    batching=batching,
                    seed=args.seed,
                )
                info = train_reward_model(config, RewardData(records, lambda path, sha: images[path]))
                runs[batching].append(info.metrics)
    results = {}
    for batching, metrics in runs.items():
        times = sorted(m["seconds_per_epoch"] for m in metrics)
        results[batching] = {
            "image_encoder_passes": metrics[0]["train_image_encoder_rows"],
            # The text encoder runs once per (prompt, image) row it cross-attends to.
            "text_encoder_passes": metrics[0]["train_image_encoder_rows"],
            "seconds_per_epoch_min": round(times[0], 2),
            "seconds_per_epoch_median": round(times[len(times) // 2], 2),
        }
    lw, pw = results["listwise"], results["pairwise"]
    summary = {
        "prompts": args.prompts,
        "images_per_prompt": N_IMAGES,
        "pairs_per_prompt": N_IMAGES * (N_IMAGES - 1) // 2,
        "image_size": args.image_size,
        "threads": args.threads,
        "results": results,
        "pass_ratio": round(pw["image_encoder_passes"] / lw["image_encoder_passes"], 2),
        "time_ratio_min": round(pw["seconds_per_epoch_min"] / lw["seconds_per_epoch_min"], 2),
        "time_ratio_median": round(pw["seconds_per_epoch_median"] / lw["seconds_per_epoch_median"], 2),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
