"""``python -m training.ml.refl finetune`` — the ReFL stage (one iteration's p_k → p_{k+1}) without the web app.

The stage config is :class:`training.ml.refl.stage.ReFLStageConfig` as JSON (reward checkpoints, base
model, ReFL hyper-parameters); prompts come one per line. For the synthetic world, ``--heldout oracle``
gives the hacking guard the world's oracle and ``--pretrain-renders N`` feeds the pretraining loss with
correct renders; other families take held-out reward models from the config's ``heldout_paths``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from training.ml.refl.stage import ReFLStageData, finetune_refl, stage_config_from_dict


def _print_progress(step: int, total: int, metrics: Mapping[str, float]) -> None:
    print(json.dumps({"step": step, "total": total, **metrics}), file=sys.stderr, flush=True)


def _read_prompts(path: str | None) -> list[str]:
    if path is None:
        return []
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def cmd_finetune(args: argparse.Namespace) -> int:
    data: dict[str, Any] = json.loads(Path(args.config).read_text())
    if args.output:
        data["output_dir"] = args.output
    if args.base:
        data["base_model_path"] = args.base
    config = stage_config_from_dict(data)
    prompts = _read_prompts(args.prompts)
    if not prompts:
        raise SystemExit(f"{args.prompts}: no prompts")
    heldout = None
    pretrain = None
    if args.heldout == "oracle" or args.pretrain_renders:
        if config.family != "world":
            raise SystemExit("--heldout oracle and --pretrain-renders exist for the synthetic world only")
        from training.ml.algorithm1.steps import world_pretrain_data
        from training.ml.refl.world_adapter import oracle_evaluator

        heldout = oracle_evaluator if args.heldout == "oracle" else None
        pretrain = (
            world_pretrain_data(args.pretrain_renders, config.refl.seed) if args.pretrain_renders else None
        )
    info = finetune_refl(
        config,
        ReFLStageData(
            prompts=prompts,
            validation_prompts=_read_prompts(args.validation_prompts),
            pretrain_data=pretrain,
            heldout=heldout,
        ),
        _print_progress,
    )
    summary = {k: v for k, v in info.metrics.items() if k != "last"}
    print(
        json.dumps({"checkpoint": str(info.path), "stopped_early": info.stopped_early, **summary}, indent=2)
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.ml.refl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    finetune = sub.add_parser("finetune", help="multi-reward ReFL from a stage config")
    finetune.add_argument("--config", required=True, help="ReFLStageConfig as JSON")
    finetune.add_argument("--prompts", required=True, help="training prompts, one per line")
    finetune.add_argument("--validation-prompts", help="guard prompts, one per line (needed with the guard)")
    finetune.add_argument("--output", help="overrides the config's output_dir")
    finetune.add_argument("--base", help="overrides the config's base_model_path")
    finetune.add_argument("--heldout", choices=("oracle", "config"), default="config")
    finetune.add_argument(
        "--pretrain-renders", type=int, default=0, help="world: correct renders for the pre-loss"
    )
    finetune.add_argument("--threads", type=int, default=1)
    finetune.set_defaults(func=cmd_finetune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    return int(args.func(args))


__all__ = ["build_parser", "main"]
