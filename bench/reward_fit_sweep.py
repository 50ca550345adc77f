"""Reward fine-tuning length and learning rate on one fixed own-sample data set: under- or over-fitting?

``bench/active_selection.py --rounds 0`` measures one setting per run and resamples everything; this samples
the same pool and held-out groups once (the same prompts, p_0 samples and simulated panel as
active_selection for the same ``--seed`` and ``--pool-prompts``: pool = the first ``--pool-prompts`` of the
category's shuffled training prompts, evaluation = the next ``--eval-prompts``) and trains one reward model
per ``EPOCHS:LR`` setting with the loop's own step (``train_reward``), then measures each with the gate's
metric (``own_sample_accuracy``). Beside the held-out accuracy it prints the reward training's own
validation curve (accuracy and loss on the 10 % of pool prompts that choose the epoch), which tells
under-fitting (loss still at ln 2 = 0.693) from over-fitting (loss far above it).

    .venv/bin/python bench/reward_fit_sweep.py --category spatial --settings 4:1e-4 20:1e-4 60:3e-4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import active_selection  # noqa: E402

from training.ml.algorithm1.steps import own_sample_accuracy, train_reward  # noqa: E402
from training.ml.loop import loop_round_config  # noqa: E402
from training.ml.world.model import PRETRAINED_DIR  # noqa: E402


def setting(text: str) -> tuple[int, float]:
    epochs, lr = text.split(":")
    return int(epochs), float(lr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=str(PRETRAINED_DIR))
    p.add_argument("--reward-init", default=None, help="pretrained BLIP folder (default: the committed one)")
    p.add_argument("--category", default="spatial")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool-prompts", type=int, default=120)
    p.add_argument("--eval-prompts", type=int, default=60)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--annotators", type=int, default=3)
    p.add_argument("--sampling-steps", type=int, default=20)
    p.add_argument("--freeze", type=float, default=None, help="frozen share (default: the recipe's 0.7)")
    p.add_argument("--settings", nargs="+", type=setting, default=[(4, 1e-4)], help="EPOCHS:LR ...")
    p.add_argument("--work-dir", default=str(ROOT / "bench" / "out" / "reward_fit_sweep"))
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "reward_fit_sweep.json"))
    p.add_argument("--threads", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base_round = loop_round_config(args.seed)

    def round_config(epochs: int, lr: float):
        reward = base_round.reward
        return dataclasses.replace(
            base_round,
            reward=dataclasses.replace(
                reward,
                epochs=epochs,
                learning_rate=lr,
                freeze_fraction=reward.freeze_fraction if args.freeze is None else args.freeze,
            ),
        )

    # The per-setting configs differ only in the reward stage, which sampling and ranking never read.
    loop, data, work = active_selection.world_setup(
        args, args.category, args.seed, round_config(*args.settings[0])
    )
    prompts = active_selection.category_prompts(args.category, args.seed)
    prompts = prompts[: args.pool_prompts + args.eval_prompts]
    pool = active_selection.sample_world_groups(args, loop, data, prompts[: args.pool_prompts], 0)
    evaluation = active_selection.records_of(
        data,
        active_selection.sample_world_groups(
            args, loop, data, prompts[args.pool_prompts :], args.pool_prompts
        ),
    )
    train = active_selection.records_of(data, pool)
    rows: list[dict[str, Any]] = []
    for epochs, lr in args.settings:
        t0 = time.perf_counter()
        info = train_reward(
            dataclasses.replace(loop.round, reward=round_config(epochs, lr).reward),
            args.category,
            train,
            data.loader(),
            work / f"e{epochs}_lr{lr:g}",
            0,
            pretrained_path=args.reward_init,
        )
        accuracy = own_sample_accuracy(info.path, evaluation, data.loader(), seed=args.seed)
        metrics = json.loads((Path(info.path) / "checkpoint.json").read_text())["metadata"]["metrics"]
        rows.append(
            {
                "epochs": epochs,
                "lr": lr,
                "own_accuracy": accuracy.accuracy,
                "ci_low": accuracy.low,
                "ci_high": accuracy.high,
                "eval_pairs": accuracy.pairs,
                "best_step": metrics["best_step"],
                "val_curve": [
                    {"step": h["step"], "accuracy": h["val_accuracy"], "loss": h["val_loss"]}
                    for h in metrics["history"]
                ],
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return active_selection.write_result(args, started, rows=rows)


if __name__ == "__main__":
    main()
