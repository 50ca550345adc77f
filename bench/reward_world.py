"""Held-out pairwise accuracy of a reward model against the synthetic world's oracle, per category.

For every prompt of the category's subcategories (training/ml/world grammar) and several seeds, the six
gallery generators each draw an image; the oracle scores it; every pair of a prompt group whose oracle
scores differ becomes a preference pair (equal scores become tie pairs, label 0.5). Prompts are split
80/10/10 with the same prompt-level hash splitter the trainer uses, so no test prompt is ever trained on.
The reward model is the same BLIP class as production, small and from scratch (nothing pretrained exists
offline), trained listwise with the production trainer.

Reported: accuracy on strict test pairs (overall and per subcategory), and two baselines computed on the
same test pairs — "generator prior" (prefer the generator with the higher mean training oracle score) and
chance (50 %). If the world's base diffusion model checkpoint exists, accuracy on pairs among its own
samples (what ReFL will score) is reported too.

    .venv/bin/python bench/reward_world.py --category spatial [--prompts 400 --train-seeds 3 --epochs 6]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.ml.common import CheckpointInfo  # noqa: E402
from training.ml.reward.checkpoint import read_reward_meta  # noqa: E402
from training.ml.reward.config import RewardModelConfig, RewardTrainConfig, TextSpec, VisionSpec  # noqa: E402
from training.ml.reward.data import PairRecord, assign_splits, dataset_fingerprint, hash_split  # noqa: E402
from training.ml.reward.train import RewardData, train_reward_model  # noqa: E402
from training.ml.world import (  # noqa: E402
    GALLERY_GENERATORS,
    REWARD_CATEGORY,
    SUBCATEGORIES,
    generate_prompts,
    oracle_score,
)

OUT = Path(__file__).resolve().parent / "out"
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def _to_uint8(image: np.ndarray) -> torch.Tensor:
    return (
        torch.from_numpy(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).permute(2, 0, 1).contiguous()
    )


def build_world_data(args: argparse.Namespace) -> dict[str, Any]:
    """Gallery images (uint8), oracle scores and group metadata; cached under bench/out/."""
    key = json.dumps(
        [args.category, args.prompts, args.train_seeds, args.eval_seeds, args.image_size, args.seed]
    )
    cache = OUT / f"reward_world_{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if cache.is_file():
        return torch.load(cache)
    names = list(GALLERY_GENERATORS)
    groups = []
    images: list[torch.Tensor] = []
    t0 = time.perf_counter()
    for sub in [s for s in SUBCATEGORIES if REWARD_CATEGORY[s] == args.category]:
        for prompt in generate_prompts(sub, args.prompts, args.seed):
            split = hash_split(prompt, SPLIT_FRACTIONS)
            for seed in range(args.train_seeds if split == "train" else args.eval_seeds):
                ids, scores = [], []
                for name in names:
                    array = GALLERY_GENERATORS[name].generate_array(prompt, seed, args.image_size)
                    scores.append(float(oracle_score(prompt, array)))
                    ids.append(len(images))
                    images.append(_to_uint8(array))
                groups.append(
                    {"prompt": prompt, "sub": sub, "split": split, "seed": seed, "ids": ids, "scores": scores}
                )
    data = {
        "names": names,
        "groups": groups,
        "images": torch.stack(images),
        "seconds": time.perf_counter() - t0,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(data, cache)
    return data


def to_records(data: dict[str, Any], category: str, ties: bool) -> list[PairRecord]:
    records = []
    for gid, g in enumerate(data["groups"]):
        for a, b in itertools.combinations(range(len(g["ids"])), 2):
            sa, sb = g["scores"][a], g["scores"][b]
            if sa == sb and not ties:
                continue
            w, lo = (a, b) if sa >= sb else (b, a)
            records.append(
                PairRecord(
                    pair_id=len(records),
                    prompt_id=gid,
                    prompt=g["prompt"],
                    category=category,
                    subcategory=g["sub"],
                    split=g["split"],
                    winner_id=g["ids"][w],
                    winner_sha256="",
                    winner_path=f"mem/{g['ids'][w]}",
                    loser_id=g["ids"][lo],
                    loser_sha256="",
                    loser_path=f"mem/{g['ids'][lo]}",
                    label=0.5 if sa == sb else 1.0,
                    source="model",
                )
            )
    return records


def generator_prior_accuracy(data: dict[str, Any]) -> float:
    """Baseline that never looks at the image: the generator with the higher mean train score wins."""
    names = data["names"]
    totals: dict[int, list[float]] = defaultdict(list)
    for g in data["groups"]:
        if g["split"] == "train":
            for k, s in enumerate(g["scores"]):
                totals[k].append(s)
    mean = {k: float(np.mean(v)) for k, v in totals.items()}
    right = n = 0.0
    for g in data["groups"]:
        if g["split"] != "test":
            continue
        for a, b in itertools.combinations(range(len(names)), 2):
            sa, sb = g["scores"][a], g["scores"][b]
            if sa == sb:
                continue
            n += 1
            if mean[a] == mean[b]:
                right += 0.5
            else:
                right += float((mean[a] > mean[b]) == (sa > sb))
    return right / n if n else float("nan")


def same_generator_accuracy(
    checkpoint: Path, data: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Pairs between fresh seeds of ONE generator on test prompts: the generator prior is chance here,
    as it is for ReFL, which compares the base model's own samples."""
    from training.ml.reward.checkpoint import load_reward_model

    reward = load_reward_model(checkpoint)
    prompts = sorted({g["prompt"] for g in data["groups"] if g["split"] == "test"})[: args.same_gen_prompts]
    seeds = list(range(1000, 1000 + args.same_gen_seeds))
    right = n = 0.0
    for prompt in prompts:
        for generator in GALLERY_GENERATORS.values():
            arrays = [generator.generate_array(prompt, seed, args.image_size) for seed in seeds]
            oracle = [oracle_score(prompt, a) for a in arrays]
            if len(set(oracle)) < 2:
                continue
            images = torch.stack([_to_uint8(a) for a in arrays]).float().div(255.0)
            with torch.no_grad():
                scores = reward.score([prompt] * len(seeds), images).tolist()
            for a, b in itertools.combinations(range(len(seeds)), 2):
                if oracle[a] != oracle[b]:
                    n += 1
                    d = scores[a] - scores[b]
                    right += 0.5 if d == 0 else float((d > 0) == (oracle[a] > oracle[b]))
    return {"accuracy": right / n if n else None, "strict_pairs": int(n), "prompts": len(prompts)}


def base_model_accuracy(checkpoint: Path, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Pairs among the base diffusion model's own samples of test prompts, ranked by the oracle."""
    from training.ml.reward.checkpoint import load_reward_model
    from training.ml.world import WorldDiffusionModel

    try:
        base = WorldDiffusionModel.load_pretrained()
    except (FileNotFoundError, OSError) as exc:
        return {"skipped": f"no base model checkpoint ({type(exc).__name__})"}
    reward = load_reward_model(checkpoint)
    prompts = sorted({g["prompt"] for g in data["groups"] if g["split"] == "test"})
    right = n = 0.0
    for prompt in prompts:
        seeds = list(range(args.base_samples))
        images = base.sample([prompt] * len(seeds), seeds)
        oracle = [oracle_score(prompt, img.permute(1, 2, 0).numpy()) for img in images]
        with torch.no_grad():
            scores = reward.score([prompt] * len(seeds), images).tolist()
        for a, b in itertools.combinations(range(len(seeds)), 2):
            if oracle[a] != oracle[b]:
                n += 1
                d = scores[a] - scores[b]
                right += 0.5 if d == 0 else float((d > 0) == (oracle[a] > oracle[b]))
    return {"accuracy": right / n if n else None, "strict_pairs": int(n), "prompts": len(prompts)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--category", choices=("attribute_binding", "spatial", "non_spatial"), required=True)
    parser.add_argument(
        "--prompts", type=int, default=400, help="prompts per subcategory (capped by the grammar)"
    )
    parser.add_argument("--train-seeds", type=int, default=3, help="prompt groups per training prompt")
    parser.add_argument("--eval-seeds", type=int, default=2, help="prompt groups per val/test prompt")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch", type=int, default=4, help="ViT patch size (32 px / 4 = 8x8 image tokens)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-groups", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--head-lr", type=float, default=None)
    parser.add_argument(
        "--init-range", type=float, default=0.05, help="backbone init std (~0.55/sqrt(hidden))"
    )
    parser.add_argument("--head-activation", choices=("none", "gelu", "relu"), default="gelu")
    parser.add_argument("--head-init", choices=("imagereward", "pytorch"), default="pytorch")
    parser.add_argument("--head-dropout", type=float, default=0.0)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--no-ties", action="store_true", help="drop equal-oracle pairs instead of tie labels"
    )
    parser.add_argument("--base-samples", type=int, default=6)
    parser.add_argument("--same-gen-seeds", type=int, default=3)
    parser.add_argument("--same-gen-prompts", type=int, default=150)
    parser.add_argument("--evaluate-only", action="store_true", help="reuse bench/out's checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a contended 2-core box")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    data = build_world_data(args)
    images = data["images"]
    records = to_records(data, args.category, ties=not args.no_ties)

    def loader(path: str, sha: str) -> torch.Tensor:
        return images[int(path.split("/")[1])].float().div(255.0)

    model = RewardModelConfig.small(
        args.category,
        vision=VisionSpec(
            hidden_size=args.hidden,
            intermediate_size=4 * args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.hidden // 32,
            image_size=args.image_size,
            patch_size=args.patch,
            initializer_range=args.init_range,
        ),
        text=TextSpec(
            hidden_size=args.hidden,
            intermediate_size=4 * args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.hidden // 32,
            initializer_range=args.init_range,
        ),
        # A from-scratch backbone needs a head that passes it gradients from the first step.
        head_activation=args.head_activation,
        head_init=args.head_init,
        head_dropout=(args.head_dropout,) * 4,
        # From scratch there is nothing pretrained to protect, so nothing is frozen.
        freeze_fraction=0.0,
    )
    out_dir = OUT / f"reward_world_{args.category}"
    config = RewardTrainConfig(
        model=model,
        output_dir=str(out_dir),
        epochs=args.epochs,
        batch_groups=args.batch_groups,
        lr=args.lr,
        head_lr=args.head_lr,
        warmup_ratio=0.05,
        split_fractions=SPLIT_FRACTIONS,
        seed=args.seed,
    )
    t_train = time.perf_counter()

    def progress(step: int, total: int, metrics: dict[str, float]) -> None:
        if "val_accuracy" in metrics:
            elapsed = time.perf_counter() - t_train
            print(
                f"step {step}/{total} val_accuracy {metrics['val_accuracy']:.3f} ({elapsed:.0f} s)",
                flush=True,
            )

    if args.evaluate_only:
        # The checkpoint records the hash of the pairs it trained on; refuse one from other data.
        meta = read_reward_meta(out_dir)["metadata"]
        expected = dataset_fingerprint(assign_splits(records, SPLIT_FRACTIONS))["sha256"]
        if meta["dataset"]["sha256"] != expected:
            raise SystemExit(f"{out_dir} was trained on other data; rerun without --evaluate-only")
        info = CheckpointInfo(path=out_dir, kind="itercomp.reward_model", metrics=meta["metrics"])
    else:
        info = train_reward_model(config, RewardData(records, loader), progress)
    train_seconds = time.perf_counter() - t_train
    m = info.metrics
    counts = defaultdict(int)
    for r in records:
        counts[f"{r.split}_{'tie' if r.label == 0.5 else 'strict'}_pairs"] += 1
    summary = {
        "category": args.category,
        "size": {
            "prompts": len({g["prompt"] for g in data["groups"]}),
            "groups": len(data["groups"]),
            "images": int(images.shape[0]),
            "image_size": args.image_size,
            **dict(sorted(counts.items())),
        },
        "model": {
            k: getattr(args, k)
            for k in (
                "patch",
                "hidden",
                "layers",
                "epochs",
                "lr",
                "head_lr",
                "init_range",
                "head_activation",
                "head_init",
            )
        },
        "test_accuracy": m.get("test_accuracy"),
        "test_accuracy_by_subcategory": {
            k.split("/")[1]: v for k, v in m.items() if k.startswith("test_accuracy/")
        },
        "val_accuracy": m.get("val_accuracy"),
        "best_step": m["best_step"],
        "steps": m["steps"],
        "baseline_generator_prior": generator_prior_accuracy(data),
        "same_generator_pairs": same_generator_accuracy(info.path, data, args),
        "base_model_samples": base_model_accuracy(info.path, data, args),
        "seconds": {
            "data": round(data["seconds"], 1),
            "train": round(train_seconds, 1),
            "per_epoch": round(m["seconds_per_epoch"], 1),
            "total": round(time.perf_counter() - t_start, 1),
        },
        "threads": args.threads,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
