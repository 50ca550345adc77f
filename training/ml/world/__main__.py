"""Command line: `python -m training.ml.world pretrain --out DIR --seed 0 ...` and `sample`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .encoder import EncoderConfig
from .model import PRETRAINED_DIR, WorldDiffusionModel, WorldModelConfig
from .pretrain import PretrainConfig, pretrain


def _channels(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split(","))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m training.ml.world")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("pretrain", help="pretrain the base diffusion model on rendered scenes")
    defaults = PretrainConfig()
    model_defaults = WorldModelConfig()
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--steps", type=int, default=defaults.steps)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--lr", type=float, default=defaults.learning_rate)
    train.add_argument("--threads", type=int, default=defaults.threads)
    train.add_argument(
        "--init",
        type=Path,
        help="continue pretraining this saved base model (same architecture) instead of starting anew",
    )
    train.add_argument("--channels", type=_channels, default=model_defaults.block_out_channels)
    train.add_argument("--prediction-type", default=model_defaults.prediction_type)
    train.add_argument(
        "--attention-levels", type=int, default=model_defaults.attention_levels
    )  # None: all but 32 px

    enc = commands.add_parser(
        "encoder", help="pretrain the world's BLIP encoder (reward models start from it)"
    )
    enc_defaults = EncoderConfig()
    enc.add_argument("--out", type=Path, required=True)
    enc.add_argument("--seed", type=int, default=enc_defaults.seed)
    enc.add_argument("--steps", type=int, default=enc_defaults.steps)
    enc.add_argument("--batch-size", type=int, default=enc_defaults.batch_size)
    enc.add_argument("--lr", type=float, default=enc_defaults.learning_rate)
    enc.add_argument("--hidden-size", type=int, default=enc_defaults.hidden_size)
    enc.add_argument("--layers", type=int, default=enc_defaults.layers)
    enc.add_argument("--threads", type=int, default=enc_defaults.threads)
    enc.add_argument("--eval-examples", type=int, default=enc_defaults.eval_examples)
    enc.add_argument("--caption-negative-share", type=float, default=enc_defaults.caption_negative_share)
    enc.add_argument(
        "--negative-kind-weights",
        type=float,
        nargs=4,
        metavar=("RELATION", "SHAPE", "SWAP", "CHANGE"),
        help="relative weights of the hard-negative caption kinds (default: all alike)",
    )

    enc.add_argument(
        "--init", type=Path, help="continue pretraining this BLIP folder instead of starting from scratch"
    )
    enc.add_argument("--warmup-steps", type=int, default=enc_defaults.warmup_steps)
    enc.add_argument(
        "--grounding-examples",
        type=int,
        default=enc_defaults.grounding_examples,
        help="correct scenes per step whose caption words must point at their objects' cells (0: off)",
    )
    enc.add_argument("--grounding-weight", type=float, default=enc_defaults.grounding_weight)
    enc.add_argument(
        "--relation-weight",
        type=float,
        default=enc_defaults.relation_weight,
        help="weight of predicting the objects' offset / inside / touching from their fused tokens",
    )
    enc.add_argument(
        "--ranked-pairs",
        type=int,
        default=enc_defaults.ranked_pairs,
        help="(correct, one binding or relation error) render pairs per step under a ranking loss (0: off)",
    )
    enc.add_argument(
        "--graded-pairs",
        type=int,
        default=enc_defaults.graded_pairs,
        help="render pairs per step with 0..--graded-max-errors errors each, fewer violated facts preferred",
    )
    enc.add_argument("--graded-max-errors", type=int, default=enc_defaults.graded_max_errors)
    enc.add_argument(
        "--location-weight",
        type=float,
        default=enc_defaults.location_weight,
        help="weight of predicting each object word's cells from its fused token alone",
    )
    enc.add_argument(
        "--position-weight",
        type=float,
        default=enc_defaults.position_weight,
        help="weight of each patch token saying where its cell is (keeps position in the image tokens)",
    )
    enc.add_argument(
        "--attention-weight",
        type=float,
        default=enc_defaults.attention_weight,
        help="weight of each object word's cross-attention falling on its object's cells",
    )
    enc.add_argument(
        "--relation-pair-share",
        type=float,
        default=enc_defaults.relation_pair_share,
        help="share of the ranked pairs whose error is a relation's (default: subcategory drawn first)",
    )
    enc.add_argument("--rank-weight", type=float, default=enc_defaults.rank_weight)

    sample = commands.add_parser("sample", help="write a PNG grid of samples for prompts")
    sample.add_argument("prompts", nargs="+")
    sample.add_argument("--model", type=Path, default=PRETRAINED_DIR)
    sample.add_argument("--out", type=Path, required=True)
    sample.add_argument("--seeds", type=int, default=4)
    sample.add_argument("--steps", type=int, default=25)
    sample.add_argument("--guidance", type=float, default=3.0)

    args = parser.parse_args(argv)
    if args.command == "pretrain":
        model_config = WorldModelConfig(
            block_out_channels=args.channels,
            prediction_type=args.prediction_type,
            attention_levels=args.attention_levels,
        )
        config = PretrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            seed=args.seed,
            threads=args.threads,
            model=model_config,
            init=None if args.init is None else str(args.init),
        )
        command = "python -m training.ml.world " + " ".join(shlex.quote(a) for a in argv)
        _, record = pretrain(config, out=args.out, command=command)
        print(f"saved to {args.out} after {record['wall_seconds']}s ({record['seconds_per_step']}s/step)")
        return 0

    if args.command == "encoder":
        from .encoder import pretrain_encoder

        encoder_config = EncoderConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            hidden_size=args.hidden_size,
            layers=args.layers,
            seed=args.seed,
            threads=args.threads,
            eval_examples=args.eval_examples,
            warmup_steps=args.warmup_steps,
            grounding_examples=args.grounding_examples,
            grounding_weight=args.grounding_weight,
            relation_weight=args.relation_weight,
            location_weight=args.location_weight,
            position_weight=args.position_weight,
            attention_weight=args.attention_weight,
            relation_pair_share=args.relation_pair_share,
            ranked_pairs=args.ranked_pairs,
            graded_pairs=args.graded_pairs,
            graded_max_errors=args.graded_max_errors,
            rank_weight=args.rank_weight,
            caption_negative_share=args.caption_negative_share,
            negative_kind_weights=(
                None if args.negative_kind_weights is None else tuple(args.negative_kind_weights)
            ),
        )
        command = "python -m training.ml.world " + " ".join(shlex.quote(a) for a in argv)
        record = pretrain_encoder(encoder_config, out=args.out, command=command, init=args.init)
        print(f"saved to {args.out} after {record['wall_seconds']}s; held-out {record['held_out']}")
        return 0

    model = WorldDiffusionModel.from_pretrained(args.model)
    rows = []
    for prompt in args.prompts:
        images = model.sample([prompt] * args.seeds, list(range(args.seeds)), args.steps, args.guidance)
        rows.append(np.concatenate(list(images.permute(0, 2, 3, 1).numpy()), axis=1))
    grid = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
