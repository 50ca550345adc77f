"""``python -m training.ml.reward train|evaluate|score`` — the reward stage without the web app."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from training.ml.common import config_from_dict
from training.ml.reward.checkpoint import load_reward_model
from training.ml.reward.config import CATEGORIES, RewardModelConfig, RewardTrainConfig
from training.ml.reward.data import FolderImageLoader, read_pairs
from training.ml.reward.evaluate import evaluate_checkpoint_on_pairs
from training.ml.reward.train import RewardData, train_reward_model


def _print_progress(step: int, total: int, metrics: Mapping[str, float]) -> None:
    print(json.dumps({"step": step, "total": total, **metrics}), file=sys.stderr, flush=True)


def _train_config(args: argparse.Namespace) -> RewardTrainConfig:
    if args.config:
        data: dict[str, Any] = json.loads(Path(args.config).read_text())
        data["output_dir"] = args.output
        return config_from_dict(RewardTrainConfig, data)
    model_kwargs: dict[str, Any] = {"freeze_fraction": args.freeze_fraction}
    if args.pretrained:
        model = RewardModelConfig(category=args.category, pretrained_path=args.pretrained, **model_kwargs)
    else:
        model = RewardModelConfig.small(args.category, **model_kwargs)
    return RewardTrainConfig(
        model=model,
        output_dir=args.output,
        epochs=args.epochs,
        batch_groups=args.batch_groups,
        grad_accum=args.grad_accum,
        lr=args.lr,
        mixed_precision=args.mixed_precision,
        tie_mode=args.tie_mode,
        max_steps=args.max_steps,
        seed=args.seed,
    )


def cmd_train(args: argparse.Namespace) -> int:
    config = _train_config(args)
    data = RewardData(
        read_pairs(args.pairs), FolderImageLoader(args.image_root, verify_sha256=args.verify_sha256)
    )
    info = train_reward_model(config, data, _print_progress)
    summary = {k: v for k, v in info.metrics.items() if k != "history"}
    print(
        json.dumps({"checkpoint": str(info.path), "stopped_early": info.stopped_early, **summary}, indent=2)
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    model = load_reward_model(args.checkpoint)
    split = None if args.split == "all" else args.split
    metrics = evaluate_checkpoint_on_pairs(
        model, args.pairs, image_root=args.image_root, split=split, tie_mode=args.tie_mode
    )
    print(json.dumps(metrics, indent=2))
    return 0


def _score_inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.input:
        rows = []
        for line in Path(args.input).read_text().splitlines():
            if line.strip():
                obj = json.loads(line)
                rows.append((str(obj["prompt"]), str(obj["path"])))
        return rows
    if not args.prompt or not args.image:
        raise SystemExit("score: give --input FILE.jsonl or --prompt TEXT with one or more --image PATH")
    return [(args.prompt, path) for path in args.image]


def cmd_score(args: argparse.Namespace) -> int:
    model = load_reward_model(args.checkpoint)
    loader = FolderImageLoader(args.image_root or ".")
    rows = _score_inputs(args)
    for start in range(0, len(rows), args.batch_size):
        chunk = rows[start : start + args.batch_size]
        images = torch.stack([model.resize_for_model(loader(path, "").unsqueeze(0))[0] for _, path in chunk])
        with torch.no_grad():
            raw = model.raw_score([p for p, _ in chunk], images)
        for (prompt, path), r, s in zip(chunk, raw.tolist(), model.normalize(raw).tolist(), strict=True):
            print(json.dumps({"prompt": prompt, "path": path, "score": s, "raw": r}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.ml.reward", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one category's reward model from a pair export")
    train.add_argument("--pairs", required=True, help="pairs .jsonl/.csv/.parquet")
    train.add_argument("--image-root", required=True, help="folder the pair paths are relative to")
    train.add_argument("--output", required=True, help="checkpoint directory to write")
    train.add_argument("--category", choices=CATEGORIES)
    train.add_argument("--config", help="RewardTrainConfig as JSON (overrides the flags below)")
    train.add_argument("--pretrained", help="local HuggingFace BLIP folder (else a small from-scratch BLIP)")
    train.add_argument("--freeze-fraction", type=float, default=0.7)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-groups", type=int, default=8)
    train.add_argument("--grad-accum", type=int, default=1)
    train.add_argument("--lr", type=float, default=1e-5)
    train.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    train.add_argument("--tie-mode", choices=("half", "skip"), default="half")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--verify-sha256", action="store_true")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="pairwise accuracy of a checkpoint on a pair export")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--pairs", required=True)
    evaluate.add_argument("--image-root", required=True)
    evaluate.add_argument("--split", choices=("train", "val", "test", "all"), default="test")
    evaluate.add_argument("--tie-mode", choices=("half", "skip"), default="half")
    evaluate.set_defaults(func=cmd_evaluate)

    score = sub.add_parser("score", help="normalised scores for prompt/image pairs (JSON lines)")
    score.add_argument("--checkpoint", required=True)
    score.add_argument("--prompt")
    score.add_argument("--image", action="append", help="image path (repeatable)")
    score.add_argument("--input", help='JSONL of {"prompt": ..., "path": ...}')
    score.add_argument("--image-root", help="folder relative paths are resolved against")
    score.add_argument("--batch-size", type=int, default=16)
    score.set_defaults(func=cmd_score)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train" and not args.config and not args.category:
        raise SystemExit("train: --category is required unless --config is given")
    return int(args.func(args))


__all__ = ["build_parser", "main"]
