"""Diffusion-DPO settings on one loop run's D_0: held-out implicit reward accuracy and the oracle, per setting.

Before the three-iteration DPO run: β and the learning rate decide whether DPO moves the world model at
all, or so far that it forgets how to denoise. This takes a finished loop run (``bench/refl_loop.py``
with ``--own-groups-per-category``), its iteration-0 pairs ranked by the panel, and for each setting runs
``finetune_dpo`` — the step the app's DPO stage and the loop run — from p_0 on the same training pairs,
then reports the held-out implicit reward accuracy and loss curve and the oracle score of p_1 against p_0
on held-out prompts (same noise, paired bootstrap by prompt). The oracle only measures; nothing trains on it.

    .venv/bin/python bench/dpo_sweep.py --loop-dir /work/runs/dpo_pilot \\
        --setting 5000:1e-5:200 --setting 5000:2e-6:200 --setting 500:1e-5:200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from refl_loop import eval_set, generate, paired_bootstrap, summarise  # noqa: E402

from training.ml.algorithm1.steps import dpo_pairs, finetune_dpo, load_policy  # noqa: E402
from training.ml.loop import FolderImageLoader, loop_round_config  # noqa: E402
from training.ml.refl.world_adapter import oracle_evaluator  # noqa: E402
from training.ml.reward.data import read_pairs  # noqa: E402


def parse_setting(text: str) -> tuple[float, float, int]:
    beta, lr, steps = text.split(":")
    return float(beta), float(lr), int(steps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loop-dir", type=Path, required=True)
    parser.add_argument("--setting", action="append", type=parse_setting, required=True, help="beta:lr:steps")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    parser.add_argument("--pair-source", choices=("own", "gallery", "both"), default="own")
    parser.add_argument("--eval-per-sub", type=int, default=12)
    parser.add_argument("--eval-seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of the evaluation")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "dpo_sweep.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    loop = json.loads((args.loop_dir / "config.json").read_text())
    base_path = loop["base_model_path"]
    rankings = json.loads((args.loop_dir / "iter_0" / "rankings.json").read_text())
    own = {img["id"] for img in rankings["images"] if img["source"] == "own:0"}
    records = read_pairs(args.loop_dir / "iter_0" / "pairs.jsonl")
    loader = FolderImageLoader(args.loop_dir)

    items = eval_set(args.eval_per_sub, args.eval_seeds)
    prompts = [p for p, _, _ in items]
    base_oracle = oracle_evaluator(
        prompts, generate(load_policy("world", base_path), items, args.steps, args.guidance)
    )
    base_oracle_list = base_oracle.tolist()
    print(f"p_0: {summarise(items, base_oracle_list)} on {len(items)} images", flush=True)

    results = []
    for beta, lr, steps in args.setting:
        base = loop_round_config(0)
        config = dataclasses.replace(
            base,
            objective="dpo",
            dpo=dataclasses.replace(base.dpo, beta=beta, pair_source=args.pair_source),
            feedback=dataclasses.replace(
                base.feedback, learning_rate=lr, steps=steps, batch_size=args.batch_size
            ),
        )
        train, heldout = dpo_pairs(config, records, own, 0)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = finetune_dpo(
                config,
                family="world",
                base_path=base_path,
                chain=[],
                pairs=train,
                loader=loader,
                output_dir=tmp,
                iteration=0,
                heldout_pairs=heldout,
                eval_every=args.eval_every,
                resume=False,
            )
            policy = load_policy("world", base_path, [result.checkpoint.path])
            oracle = oracle_evaluator(prompts, generate(policy, items, args.steps, args.guidance)).tolist()
        curve = [
            (c["step"], round(c["val/implicit_acc"], 3), round(c["val/loss"], 3))
            for c in result.curve
            if "val/loss" in c
        ]
        diff = paired_bootstrap(items, base_oracle_list, oracle, reps=2000, seed=0)
        row = {
            "beta": beta,
            "learning_rate": lr,
            "steps": steps,
            "batch_size": args.batch_size,
            "train_pairs": len(train),
            "heldout_pairs": len([p for p in heldout if p.label == 1.0]),
            "heldout_curve": curve,
            "oracle": summarise(items, oracle),
            "oracle_gain": diff,
            "seconds": round(time.perf_counter() - started, 1),
        }
        results.append(row)
        d = diff["overall"]
        print(
            f"beta {beta:g} lr {lr:g} steps {steps}: held-out (step, acc, loss) {curve}; "
            f"oracle {row['oracle']['overall']:.3f} gain {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] "
            f"({row['seconds']:.0f} s)",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "loop_dir": str(args.loop_dir),
                "eval_images": len(items),
                "p0": summarise(items, base_oracle_list),
                "settings": results,
                "seconds": round(time.perf_counter() - t0, 1),
                "mean_base_oracle": float(np.mean(base_oracle_list)),
            },
            indent=1,
        )
    )
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
