"""Multi-reward ReFL on the synthetic world: does the oracle (never optimised) agree with the rewards?

Base model: the world's pretrained diffusion model. Rewards: the world reward models trained by
bench/reward_world.py (``--categories``, default all three: attribute_binding, spatial, non_spatial),
weight 1 each. Prompts:
- ReFL training: the pretraining-split prompts minus a validation subset;
- validation (guard, checkpoint choice): ``--val-per-sub`` pretraining-split prompts per subcategory;
- evaluation (reported): held-out grammar prompts, never seen by pretraining, ReFL or the guard.
Runs (each from the same base):
- naive: full UNet, lr 1e-4, reward loss only, no guard;
- conservative: full UNet, lr 1.5e-5, pretraining denoising loss mixed in (correct renders, the base
  model's own pretraining distribution), guard every 10 steps on validation prompts with the oracle as
  held-out evaluator, best checkpoint by oracle kept;
- preloss_only: the conservative run with the reward loss switched off (reward_scale 0): how much of the
  conservative gain is just more pretraining.
Reported per run: mean oracle score and mean weighted normalised reward on the evaluation prompts
(fixed seeds, same noise for every model), relative oracle change vs the base, wall time.

    .venv/bin/python bench/refl_world.py [--runs naive,conservative,preloss_only] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.ml.algorithm1.steps import hash_rank  # noqa: E402
from training.ml.refl.config import GuardConfig, ReFLConfig  # noqa: E402
from training.ml.refl.sampler import sample  # noqa: E402
from training.ml.refl.trainer import ReFLTrainer, RewardSpec  # noqa: E402
from training.ml.refl.world_adapter import WorldAdapter, oracle_evaluator  # noqa: E402
from training.ml.world.model import PRETRAINED_DIR, WorldDiffusionModel  # noqa: E402
from training.ml.world.pretrain import held_out_prompts, training_prompts  # noqa: E402
from training.ml.world.vocab import REWARD_CATEGORIES  # noqa: E402

OUT = ROOT / "bench" / "out"


def _pick(prompts: list[str], n: int, salt: str) -> list[str]:
    return hash_rank(prompts, salt)[:n]


def prompt_sets(val_per_sub: int, eval_per_sub: int) -> dict[str, dict[str, list[str]]]:
    train, val, evaluation = {}, {}, {}
    for sub, prompts in training_prompts().items():
        val[sub] = _pick(prompts, val_per_sub, "val")
        train[sub] = [p for p in prompts if p not in set(val[sub])]
    for sub, prompts in held_out_prompts().items():
        evaluation[sub] = _pick(prompts, eval_per_sub, "eval")
    return {"train": train, "val": val, "eval": evaluation}


def pretrain_data(prompts: dict[str, list[str]], n: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    """Correct renders of training prompts: the base model's own pretraining distribution."""
    from training.ml.world.layout import render_prompt

    rng = np.random.default_rng(seed)
    flat = [p for ps in prompts.values() for p in ps]
    out = []
    for _ in range(n):
        prompt = flat[int(rng.integers(len(flat)))]
        image = np.asarray(render_prompt(prompt, int(rng.integers(2**31))), dtype=np.float32) / 255.0
        out.append((prompt, torch.from_numpy(image).permute(2, 0, 1).contiguous()))
    return out


def load_rewards(rewards_dir: Path, categories: list[str]) -> dict[str, RewardSpec]:
    from training.ml.reward.checkpoint import load_reward_model

    rewards = {}
    for category in categories:
        path = rewards_dir / f"reward_world_{category}"
        if not (path / "checkpoint.json").is_file():
            raise SystemExit(f"missing reward checkpoint {path} (train it with bench/reward_world.py)")
        rewards[category] = RewardSpec(load_reward_model(path).score, 1.0)
    return rewards


@torch.no_grad()
def evaluate(
    adapter: WorldAdapter,
    rewards: dict[str, RewardSpec],
    prompts: dict[str, list[str]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    flat = [(sub, p, s) for sub, ps in prompts.items() for p in ps for s in range(args.eval_seeds)]
    oracle, reward = [], []
    for start in range(0, len(flat), 16):
        chunk = flat[start : start + 16]
        texts = [p for _, p, _ in chunk]
        noise = adapter.model.initial_noise([10_000 + 97 * i + s for i, (_, _, s) in enumerate(chunk, start)])
        images = sample(
            adapter, texts, num_inference_steps=args.steps, guidance_scale=args.guidance, latents=noise
        )
        oracle += oracle_evaluator(texts, images).tolist()
        reward += sum(spec.weight * spec.score(texts, images) for spec in rewards.values()).tolist()
    by_sub = {}
    for sub in prompts:
        idx = [i for i, (s, _, _) in enumerate(flat) if s == sub]
        by_sub[sub] = statistics.fmean(oracle[i] for i in idx)
    return {
        "oracle": statistics.fmean(oracle),
        "reward": statistics.fmean(reward),
        "oracle_by_sub": by_sub,
        "oracle_per_image": oracle,
    }


def paired_change(base: list[float], run: list[float]) -> tuple[float, float]:
    """Mean per-image oracle difference (same prompt, same noise) and its standard error."""
    diffs = [r - b for b, r in zip(base, run, strict=True)]
    return statistics.fmean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5


def run_config(name: str, args: argparse.Namespace) -> ReFLConfig:
    common = dict(
        num_inference_steps=args.steps,
        late_steps=args.late,
        guidance_scale=args.guidance,
        batch_size=args.batch,
        train_mode="full",
        reward_scale=1.0,
        weight_decay=0.0,
        seed=args.seed,
    )
    if name == "naive":
        return ReFLConfig(
            **common, learning_rate=1e-4, max_steps=args.naive_steps, guard=GuardConfig(every=0)
        )
    guard = GuardConfig(every=10, patience=3, num_inference_steps=args.steps, restore_best_at_end=True)
    conservative = dict(
        common, learning_rate=1.5e-5, max_steps=args.conservative_steps, pretrain_loss_weight=1.0, guard=guard
    )
    if name == "conservative":
        return ReFLConfig(**conservative)
    if name == "preloss_only":
        return ReFLConfig(**{**conservative, "reward_scale": 0.0})
    raise SystemExit(f"unknown run {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=Path, default=PRETRAINED_DIR)
    parser.add_argument("--rewards-dir", type=Path, default=OUT)
    parser.add_argument("--runs", default="naive,conservative,preloss_only")
    parser.add_argument("--categories", default=",".join(REWARD_CATEGORIES), help="reward models to optimise")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps T (ReFL and evaluation)")
    parser.add_argument("--late", type=int, default=5, help="grad step drawn from the last LATE of T")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--naive-steps", type=int, default=150)
    parser.add_argument("--conservative-steps", type=int, default=100)
    parser.add_argument("--val-per-sub", type=int, default=3)
    parser.add_argument("--eval-per-sub", type=int, default=10)
    parser.add_argument("--eval-seeds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.base / "model.safetensors").is_file():
        raise SystemExit(f"no world base model at {args.base} (python -m training.ml.world pretrain)")

    sets = prompt_sets(args.val_per_sub, args.eval_per_sub)
    train_prompts = [p for ps in sets["train"].values() for p in ps]
    val_prompts = [p for ps in sets["val"].values() for p in ps]
    rewards = load_rewards(args.rewards_dir, args.categories.split(","))
    from training.ml.common import sha256_file

    # Reward checkpoints get retrained in place; record which weights this run optimised.
    provenance = {
        c: sha256_file(args.rewards_dir / f"reward_world_{c}" / "model.safetensors")[:16]
        for c in args.categories.split(",")
    }
    provenance["base"] = sha256_file(args.base / "model.safetensors")[:16]
    print(f"weights: {provenance}", flush=True)
    base = WorldAdapter(WorldDiffusionModel.from_pretrained(args.base))
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "weights": provenance}
    t0 = time.perf_counter()
    results["base"] = evaluate(base, rewards, sets["eval"], args)
    print(
        f"base: oracle {results['base']['oracle']:.4f} reward {results['base']['reward']:+.3f} "
        f"on {len(results['base']['oracle_per_image'])} images ({time.perf_counter() - t0:.0f}s)",
        flush=True,
    )
    data = pretrain_data(sets["train"], 512, args.seed)
    for name in args.runs.split(","):
        cfg = run_config(name, args)
        adapter = WorldAdapter(WorldDiffusionModel.from_pretrained(args.base))
        trainer = ReFLTrainer(
            adapter,
            cfg,
            rewards,
            train_prompts,
            heldout=oracle_evaluator if cfg.guard.enabled else None,
            validation_prompts=val_prompts if cfg.guard.enabled else (),
            pretrain_data=data if cfg.pretrain_loss_weight > 0 else None,
        )
        t0 = time.perf_counter()
        log_every = max(1, cfg.max_steps // 10)

        def progress(
            step: int, total: int, metrics: dict[str, float], name: str = name, log_every: int = log_every
        ) -> None:
            if step % log_every == 0 or "val/heldout" in metrics:
                val = (
                    f" val oracle {metrics['val/heldout']:.3f} val reward {metrics['val/reward']:+.3f}"
                    if "val/heldout" in metrics
                    else ""
                )
                print(f"  {name} {step}/{total} train reward {metrics['reward']:+.3f}{val}", flush=True)

        summary = trainer.train(progress)
        train_s = time.perf_counter() - t0
        scores = evaluate(adapter, rewards, sets["eval"], args)
        rel = (scores["oracle"] - results["base"]["oracle"]) / results["base"]["oracle"]
        diff, se = paired_change(results["base"]["oracle_per_image"], scores["oracle_per_image"])
        results[name] = {
            **scores,
            "oracle_change": rel,
            "oracle_diff": diff,
            "oracle_diff_se": se,
            "steps": summary.steps,
            "best_step": summary.best_step,
            "stop_reason": summary.stop_reason,
            "guard_history": summary.guard_history,
            "train_seconds": train_s,
        }
        print(
            f"{name}: oracle {scores['oracle']:.4f} ({rel:+.1%} vs base; paired diff {diff:+.4f} ± {se:.4f} SE) "
            f"reward {scores['reward']:+.3f} "
            f"steps {summary.steps} best_step {summary.best_step} stop {summary.stop_reason} ({train_s:.0f}s)",
            flush=True,
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "refl_world.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
