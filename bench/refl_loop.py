"""Learning validity of Algorithm 1 on the synthetic world: does the oracle (never optimised) improve?

Runs ``training.ml.loop.run_loop`` for K iterations from the world base model (D_0: the six gallery
generators ranked by the simulated expert panel; three reward models retrained on D_k every iteration;
conservative multi-reward ReFL with the oracle guard on validation prompts; new samples inserted by
reward score), then evaluates p_0 .. p_K on held-out grammar prompts (never seen by pretraining, the
loop's data or the guard), every model on the same fixed noise:

- mean oracle score per category and overall, and the paired difference vs p_0 with a 95 % bootstrap
  interval that resamples prompts (all seeds of a prompt move together);
- baselines on the same prompts: p_0 with higher classifier-free guidance; best-of-N reranking of p_0
  with the last iteration's reward models (``training.ml.refl.best_of_n``); best-of-N of p_K;
- the reward-vs-oracle curve of every ReFL run at its guard evaluations (validation prompts), printed
  and plotted to bench/out/refl_loop_curves.png; a sample grid, p_0 vs p_K on the same noise, to
  bench/out/refl_loop_samples.png.

With ``--objective dpo`` every iteration fine-tunes by Diffusion-DPO on the panel's pairs instead of ReFL
(the loop's ``run_iteration`` with the objective swapped, as an app round with objective DPO): the same
evaluation, baselines and summary keys, the DPO loss and held-out implicit reward accuracy in place of
the guard curve; ``--summary bench/results/dpo.json`` writes the summary there too.

    .venv/bin/python bench/refl_loop.py [--iterations 3] [--reuse] [sizes: see --help]
    .venv/bin/python bench/refl_loop.py --objective dpo --dpo-pair-source own --expert-pushback \
        --own-groups-per-category 40 --tag _dpo --summary bench/results/dpo.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.ml.algorithm1.config import OBJECTIVES  # noqa: E402
from training.ml.algorithm1.steps import hash_rank, routed_reward  # noqa: E402
from training.ml.loop import (  # noqa: E402
    LoopConfig,
    loop_round_config,
    print_progress,
    reference_from_dir,
    run_loop,
    world_policy,
)
from training.ml.refl.best_of_n import best_of_n  # noqa: E402
from training.ml.refl.losses import weighted_reward  # noqa: E402
from training.ml.refl.sampler import sample  # noqa: E402
from training.ml.refl.world_adapter import WorldAdapter, oracle_evaluator  # noqa: E402
from training.ml.reward.checkpoint import load_reward_model  # noqa: E402
from training.ml.world.pretrain import held_out_prompts  # noqa: E402
from training.ml.world.vocab import REWARD_CATEGORIES, REWARD_CATEGORY  # noqa: E402

OUT = ROOT / "bench" / "out"
EVAL_NOISE_BASE = 50_000  # far from the loop's sampling seeds, so evaluation noise is never trained on


def eval_set(per_sub: int, seeds: int) -> list[tuple[str, str, int]]:
    """(prompt, subcategory, seed) for held-out prompts; deterministic hash choice per subcategory."""
    flat = []
    for sub, prompts in held_out_prompts().items():
        ranked = hash_rank(prompts, "eval")
        flat += [(p, sub, s) for p in ranked[:per_sub] for s in range(seeds)]
    return flat


@torch.no_grad()
def generate(
    adapter: WorldAdapter,
    items: Sequence[tuple[str, str, int]],
    steps: int,
    guidance: float,
    noise_base: int = EVAL_NOISE_BASE,
) -> torch.Tensor:
    chunks = []
    for start in range(0, len(items), 16):
        chunk = items[start : start + 16]
        # Noise from (prompt index, seed) alone: every model sees exactly the same starting points.
        seeds = [noise_base + 97 * i + s for i, (_, _, s) in enumerate(chunk, start)]
        chunks.append(
            sample(
                adapter,
                [p for p, _, _ in chunk],
                num_inference_steps=steps,
                guidance_scale=guidance,
                latents=adapter.model.initial_noise(seeds),
            )
        )
    return torch.cat(chunks)


@torch.no_grad()
def rewards_of(reward_fns: dict[str, Any], prompts: list[str], images: torch.Tensor) -> list[float]:
    out = []
    for start in range(0, len(prompts), 64):
        p, im = prompts[start : start + 64], images[start : start + 64]
        scores = {n: fn(p, im).float() for n, fn in reward_fns.items()}
        out += weighted_reward(scores, {n: 1.0 for n in reward_fns}).tolist()
    return out


def summarise(items: Sequence[tuple[str, str, int]], oracle: Sequence[float]) -> dict[str, float]:
    cats = [REWARD_CATEGORY[sub] for _, sub, _ in items]
    out = {"overall": float(np.mean(oracle))}
    for c in REWARD_CATEGORIES:
        out[c] = float(np.mean([o for o, cc in zip(oracle, cats, strict=True) if cc == c]))
    return out


def paired_bootstrap(
    items: Sequence[tuple[str, str, int]], base: Sequence[float], run: Sequence[float], reps: int, seed: int
) -> dict[str, dict[str, float]]:
    """Mean per-image difference and its 95 % percentile interval, resampling prompts (clusters)."""
    out = {}
    for scope in ("overall", *REWARD_CATEGORIES):
        by_prompt: dict[str, list[float]] = {}
        for (p, sub, _), b, r in zip(items, base, run, strict=True):
            if scope == "overall" or REWARD_CATEGORY[sub] == scope:
                by_prompt.setdefault(p, []).append(r - b)
        sums = np.array([sum(v) for v in by_prompt.values()])
        counts = np.array([len(v) for v in by_prompt.values()])
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(sums), size=(reps, len(sums)))
        # Ratio of resampled sums keeps the per-image mean when prompts have different seed counts.
        boot = sums[idx].sum(1) / counts[idx].sum(1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        out[scope] = {"diff": float(sums.sum() / counts.sum()), "lo": float(lo), "hi": float(hi)}
    return out


@torch.no_grad()
def own_sample_accuracy(
    args: argparse.Namespace,
    items: Sequence[tuple[str, str, int]],
    images: torch.Tensor,
    oracle: Sequence[float],
    iterations: Sequence[int] | None = None,
) -> dict[str, Any]:
    """What ReFL relies on: does each category's reward model order p_0's own samples like the oracle?

    Pairs are two seeds of one held-out prompt whose oracle scores differ (a generator prior cannot help).
    ``iterations``: whose reward models R_k judge ``images`` (default R_0 and R_{K-1}).
    """
    out: dict[str, Any] = {}
    for k in sorted({0, args.iterations - 1} if iterations is None else set(iterations)):
        for c in REWARD_CATEGORIES:
            idx = [i for i, (_, sub, _) in enumerate(items) if REWARD_CATEGORY[sub] == c]
            model = load_reward_model(args.loop_dir / f"iter_{k}" / "reward" / c).eval()
            scores = model.score([items[i][0] for i in idx], images[idx]).tolist()
            score_of = dict(zip(idx, scores, strict=True))
            right = n = 0.0
            for a in idx:
                for b in idx:
                    if a < b and items[a][0] == items[b][0] and oracle[a] != oracle[b]:
                        n += 1
                        d = (score_of[a] - score_of[b]) * (oracle[a] - oracle[b])
                        right += 0.5 if score_of[a] == score_of[b] else float(d > 0)
            out[f"R_{k}/{c}"] = {"accuracy": round(right / n, 3) if n else None, "pairs": int(n)}
    return out


def hacking_stats(items: Sequence[tuple[str, str, int]], images: torch.Tensor) -> dict[str, float]:
    """What the oracle's score can hide: extra objects, a tinted background, striped objects.

    - extra_objects: share of images where the oracle sees an object the prompt did not ask for;
    - background_tint: mean |pixel − the world's background colour| on the 2-pixel border (objects are
      placed inside the canvas, so the border is background in a correct image), in [0, 1];
    - stripes: mean |row-to-row difference| over object pixels (those further than 0.1 from the
      background), i.e. horizontal high-frequency energy painted onto objects.
    """
    from training.ml.world.oracle import oracle_report
    from training.ml.world.vocab import BACKGROUND

    background = torch.tensor(BACKGROUND, dtype=torch.float32).view(3, 1, 1) / 255.0
    extras, tints, stripes = [], [], []
    for (prompt, _, _), image in zip(items, images, strict=True):
        extras.append(float(oracle_report(prompt, image.permute(1, 2, 0).numpy())["n_extra"] > 0))
        deviation = (image - background).abs()
        border = torch.ones(image.shape[1:], dtype=torch.bool)
        border[2:-2, 2:-2] = False
        tints.append(float(deviation[:, border].mean()))
        objects = deviation.mean(0) > 0.1
        rows = (image[:, 1:, :] - image[:, :-1, :]).abs().mean(0)
        mask = objects[1:, :] & objects[:-1, :]
        stripes.append(float(rows[mask].mean()) if mask.any() else 0.0)
    return {
        "extra_objects": float(np.mean(extras)),
        "background_tint": float(np.mean(tints)),
        "stripes": float(np.mean(stripes)),
    }


def learning_validity_summary(
    args: argparse.Namespace,
    table: list[dict[str, Any]],
    metrics: list[dict[str, Any]],
    results: dict[str, Any],
) -> dict[str, Any]:
    """The learning-validity issue's keys: reward accuracy (own samples, gallery), best-of-4 gain, and per
    iteration and baseline the oracle per category with its relative gain and paired 95 % interval."""
    last_rewards = metrics[-1]["rewards"] if metrics else {}
    first_rewards = metrics[0]["rewards"] if metrics else {}
    rows = []
    base = table[0]["mean"]
    for row in table:
        name = row["run"]
        k = int(name.split()[-1]) if name.startswith("iteration ") else None
        for category in REWARD_CATEGORIES:
            d = row["vs_iteration_0"][category]
            rows.append(
                {
                    "k": k,
                    "run": name,
                    "category": category,
                    "oracle": row["mean"][category],
                    "rel_gain": d["diff"] / base[category] if base[category] else None,
                    "gap_closed": d["diff"] / (1 - base[category]) if base[category] < 1 else None,
                    "ci_low": d["lo"],
                    "ci_high": d["hi"],
                    "hacking": row.get("hacking"),
                }
            )
    best_of = next((r for r in table if r["run"] == f"p0 best-of-{args.best_of}"), None)
    return {
        "objective": args.objective,
        "guidance": args.guidance,
        # Gate metric of the last iteration's reward models: held-out panel-ranked pairs of p_k's samples.
        "rm_own_accuracy": {c: r.get("own_accuracy") for c, r in last_rewards.items()},
        "rm_own_accuracy_ci_low": {c: r.get("own_accuracy_ci_low") for c, r in last_rewards.items()},
        "rm_own_pairs": {c: r.get("own_pairs") for c, r in last_rewards.items()},
        # What any scorer can reach on those pairs (the oracle's accuracy: exact oracle ties the panel's
        # noise ordered are coin flips), their share, and the reward models on the oracle-decidable ones.
        "rm_own_ceiling": {c: _ref(r, "own_ceiling") for c, r in last_rewards.items()},
        "rm_own_oracle_ties": {c: _ref(r, "own_oracle_ties") for c, r in last_rewards.items()},
        "rm_own_decidable_accuracy": {c: _ref(r, "own_decidable_accuracy") for c, r in last_rewards.items()},
        # R_0's accuracy on held-out gallery pairs: its validation split's pairs of two gallery images
        # (``rm_val_accuracy``, the figure that chose its epoch, also counts own-sample pairs).
        "rm_gallery_accuracy": {c: _ref(r, "gallery_accuracy") for c, r in first_rewards.items()},
        "rm_gallery_pairs": {c: _ref(r, "gallery_pairs") for c, r in first_rewards.items()},
        "rm_gallery_ceiling": {c: _ref(r, "gallery_ceiling") for c, r in first_rewards.items()},
        "rm_val_accuracy": {c: r.get("val_accuracy") for c, r in first_rewards.items()},
        "best_of_4_gain": best_of["vs_iteration_0"]["overall"]["diff"]
        if best_of and args.best_of == 4
        else None,
        "iterations": [r for r in rows if r["k"] is not None],
        "baselines": [r for r in rows if r["k"] is None],
        "reward_accuracy_on_p0_seed_pairs": results.get("reward_accuracy_on_p0"),
    }


def _ref(reward: dict[str, Any], key: str) -> Any:
    return (reward.get("reference") or {}).get(key)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def plot_curves(metrics: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        if m.get("objective") == "dpo":
            _plot_dpo(ax, m)
            continue
        guard = m["refl"]["guard_history"]
        steps = [g["step"] for g in guard]
        ax.plot(steps, [g["reward"] for g in guard], "o-", color="tab:blue", label="val reward (optimised)")
        ax.set_xlabel("ReFL step")
        ax.set_ylabel("weighted normalised reward", color="tab:blue")
        twin = ax.twinx()
        twin.plot(steps, [g["heldout"] for g in guard], "s-", color="tab:red", label="val oracle (held out)")
        twin.set_ylabel("oracle", color="tab:red")
        best = m["refl"].get("best_step")
        if best is not None:
            ax.axvline(best, color="grey", ls="--", lw=1)
        ax.set_title(f"iteration {m['iteration'] + 1} (kept step {best})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_dpo(ax: Any, m: dict[str, Any]) -> None:
    """One DPO iteration: training loss per step and the implicit reward accuracy on held-out pairs."""
    curve = m["refl_curve"]
    loss = [(c["step"], c["loss"]) for c in curve if "loss" in c]
    held = [(c["step"], c["val/implicit_acc"]) for c in curve if "val/implicit_acc" in c]
    ax.plot([s for s, _ in loss], [v for _, v in loss], "-", color="tab:blue", label="DPO loss")
    ax.set_xlabel("DPO step")
    ax.set_ylabel("DPO loss", color="tab:blue")
    twin = ax.twinx()
    twin.plot([s for s, _ in held], [v for _, v in held], "s-", color="tab:red")
    twin.set_ylabel("held-out implicit accuracy", color="tab:red")
    ax.set_title(f"iteration {m['iteration'] + 1} (DPO, {m['refl'].get('pairs')} pairs)")


def sample_grid(rows: list[torch.Tensor], path: Path, scale: int = 3) -> None:
    from PIL import Image

    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # [3, rows*H, cols*W]
    array = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(array)
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loop-dir", type=Path, default=OUT / "refl_loop")
    parser.add_argument("--reuse", action="store_true", help="evaluate an existing --loop-dir run")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--prompts-per-category", type=int, default=250)
    parser.add_argument("--gallery-seeds", type=int, default=2)
    parser.add_argument("--reward-epochs", type=int, default=5)
    parser.add_argument("--reward-hidden", type=int, default=128)
    parser.add_argument("--refl-steps", type=int, default=80)
    parser.add_argument("--refl-lr", type=float, default=1.5e-5)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="fine-tuning batch: ReFL prompts / DPO pairs (default: recipe)",
    )
    parser.add_argument("--guard-every", type=int, default=10)
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up of the fine-tuning lr")
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        help="EMA of the fine-tuned weights (ReFL, raft; default off)",
    )
    parser.add_argument(
        "--reward-scale", type=float, default=1.0, help="ReFL reward loss weight (pre-loss 1)"
    )
    parser.add_argument(
        "--val-per-sub", type=int, default=12, help="validation prompts per subcategory (guard)"
    )
    parser.add_argument("--sample-prompts", type=int, default=450, help="D's prompts sampled per iteration")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps T everywhere")
    parser.add_argument("--guidance", type=float, default=1.0, help="CFG of the loop and the evaluation")
    parser.add_argument("--high-guidance", type=float, default=3.0, help="baseline: p_0 at this CFG")
    parser.add_argument("--best-of", type=int, default=4)
    parser.add_argument("--eval-per-sub", type=int, default=48, help="held-out prompts per subcategory (cap)")
    parser.add_argument("--eval-seeds", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora", action="store_true", help="LoRA instead of full fine-tuning")
    parser.add_argument(
        "--tag", default="", help="suffix of the output files (several variants side by side)"
    )
    parser.add_argument("--skip-baselines", action="store_true", help="only p_0 .. p_K (no CFG, best-of-N)")
    parser.add_argument(
        "--base-in-gallery", action="store_true", help="D_0 also holds p_0's samples ranked by the panel"
    )
    parser.add_argument("--base-samples", type=int, default=2, help="p_0 samples per D_0 group")
    parser.add_argument(
        "--expert-pushback", action="store_true", help="the panel re-ranks each group after expansion"
    )
    parser.add_argument(
        "--own-groups-per-category", type=int, default=0, help="groups of p_k's own samples the panel ranks"
    )
    parser.add_argument("--own-group-size", type=int, default=4)
    parser.add_argument(
        "--base-model", default=None, help="world base model folder (default: the committed one)"
    )
    parser.add_argument(
        "--backbone", choices=("pretrained", "scratch"), default="pretrained", help="reward models' BLIP"
    )
    parser.add_argument(
        "--encoder", default=None, help="pretrained world encoder folder (default: committed)"
    )
    parser.add_argument(
        "--reward-lr", type=float, default=None, help="reward learning rate (default: recipe)"
    )
    parser.add_argument("--freeze", type=float, default=None, help="frozen share of a pretrained encoder")
    parser.add_argument(
        "--reward-head",
        choices=("mlp", "itm"),
        default="mlp",
        help="score head (itm: the encoder's matching head)",
    )
    parser.add_argument("--tie-margin", type=float, default=0.1, help="panel split counted as a tie")
    parser.add_argument(
        "--consensus",
        choices=("borda", "kemeny", "plackett_luce"),
        default="borda",
        help="how the panel's rankings become one ordering",
    )
    parser.add_argument(
        "--expert-ties",
        type=float,
        default=0.0,
        help="each expert ties neighbours whose perceived scores differ by less than this (0: never)",
    )
    parser.add_argument("--gate", choices=("require", "measured", "off"), default="measured")
    parser.add_argument("--guard-rule", choices=("paired", "best_mean"), default="paired")
    parser.add_argument("--guard-seeds", type=int, default=3)
    parser.add_argument(
        "--oracle-best-of", type=int, default=4, help="ceiling: p_0 best-of-N chosen by the oracle (0: skip)"
    )
    parser.add_argument(
        "--control-dir",
        type=Path,
        default=None,
        help="a loop run with --reward-scale 0 (same settings otherwise): its p_K is the pretraining-loss-only "
        "control baseline",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="refl",
        help="fine-tuning objective of every iteration (raft: reward-ranked fine-tuning)",
    )
    parser.add_argument(
        "--raft-candidates", type=int, default=4, help="samples per prompt the reward models choose from"
    )
    parser.add_argument(
        "--raft-caption-dropout", type=float, default=0.1, help="share of empty captions in RAFT's loss"
    )
    parser.add_argument(
        "--raft-noise-floor",
        type=float,
        default=0.0,
        help="RAFT's denoising loss trains timesteps in [floor*T, T) only",
    )
    parser.add_argument(
        "--raft-guidance",
        type=float,
        default=None,
        help="guidance of RAFT's candidates (default: --guidance)",
    )
    parser.add_argument(
        "--feedback-prompts",
        type=int,
        default=None,
        help="fine-tuning's training prompts per category (default: all of D's)",
    )
    parser.add_argument("--dpo-beta", type=float, default=5000.0, help="Diffusion-DPO beta (objective dpo)")
    parser.add_argument(
        "--dpo-pair-source",
        choices=("own", "gallery", "both"),
        default="both",
        help="which panel-ranked pairs train DPO: those touching p_k's samples, the others, or both",
    )
    parser.add_argument("--dpo-ties", choices=("skip", "down_weight"), default="skip")
    parser.add_argument(
        "--summary", type=Path, help="also write the learning-validity summary here (bench/results/dpo.json)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    base = loop_round_config(args.seed)
    round_config = dataclasses.replace(
        base,
        objective=args.objective,
        dpo=dataclasses.replace(
            base.dpo, beta=args.dpo_beta, pair_source=args.dpo_pair_source, ties=args.dpo_ties
        ),
        raft=dataclasses.replace(
            base.raft,
            candidates=args.raft_candidates,
            caption_dropout=args.raft_caption_dropout,
            noise_floor=args.raft_noise_floor,
            guidance_scale=args.raft_guidance,
        ),
        reward=dataclasses.replace(
            base.reward,
            backbone=args.backbone,
            hidden_size=args.reward_hidden,
            epochs=args.reward_epochs,
            learning_rate=args.reward_lr or base.reward.learning_rate,
            freeze_fraction=base.reward.freeze_fraction if args.freeze is None else args.freeze,
            head=args.reward_head,
        ),
        feedback=dataclasses.replace(
            base.feedback,
            steps=args.refl_steps,
            sampling_steps=args.steps,
            late_steps=min(base.feedback.late_steps, args.steps),
            guidance_scale=args.guidance,
            learning_rate=args.refl_lr,
            batch_size=args.batch_size or base.feedback.batch_size,
            reward_scale=args.reward_scale,
            guard_every=args.guard_every,
            ema_decay=args.ema_decay,
            warmup_steps=args.warmup_steps,
            guard_rule=args.guard_rule,
            guard_seeds=args.guard_seeds,
            gate=args.gate,
            lora=args.lora,
            prompts_per_category=args.feedback_prompts or base.feedback.prompts_per_category,
        ),
        push_back=dataclasses.replace(
            base.push_back,
            # The loop's D spans three categories; the flag has always counted prompts over all three.
            prompts_per_category=max(1, args.sample_prompts // 3),
            share_of_prompts=1.0 if args.expert_pushback else 0.0,
        ),
    )
    config = LoopConfig(
        output_dir=str(args.loop_dir),
        iterations=args.iterations,
        prompts_per_category=args.prompts_per_category,
        gallery_seeds=args.gallery_seeds,
        val_prompts_per_subcategory=args.val_per_sub,
        base_in_gallery=args.base_in_gallery,
        base_samples=args.base_samples,
        own_groups_per_category=args.own_groups_per_category,
        own_group_size=args.own_group_size,
        tie_margin=args.tie_margin,
        expert_tie_threshold=args.expert_ties,
        consensus_method=args.consensus,
        encoder_path=args.encoder,
        round=round_config,
        **({"base_model_path": args.base_model} if args.base_model else {}),
    )
    if args.reuse:
        metrics = [
            json.loads((args.loop_dir / f"iter_{k}" / "metrics.json").read_text())
            for k in range(args.iterations)
        ]
        for k, m in enumerate(metrics):
            # A run from before the loop measured its oracle reference: the same figures from its folder.
            if any("reference" not in r for r in m["rewards"].values()):
                for category, ref in reference_from_dir(args.loop_dir, k).items():
                    m["rewards"][category]["reference"] = ref
    else:
        metrics = run_loop(config, print_progress).metrics
    loop_seconds = time.perf_counter() - t_start
    print(f"loop: {loop_seconds / 60:.1f} min", flush=True)

    items = eval_set(args.eval_per_sub, args.eval_seeds)
    prompts = [p for p, _, _ in items]
    validation = set(json.loads((args.loop_dir / "summary.json").read_text())["validation_prompts"])
    assert not validation & set(prompts), "validation prompts leaked into the evaluation set"
    # The last iteration's reward models judge every run's reward column and rerank best-of-N.
    reward_dir = args.loop_dir / f"iter_{args.iterations - 1}" / "reward"
    models = {c: load_reward_model(reward_dir / c).eval().score for c in REWARD_CATEGORIES}
    # Each image judged by its prompt's category model only (as ReFL does with route_rewards).
    routed = routed_reward(models, {p: REWARD_CATEGORY[sub] for p, sub, _ in items})
    last_rewards = {"routed": routed} if config.round.feedback.route_rewards else models
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "eval_images": len(items)}
    results["eval_prompts"] = len(set(prompts))
    print(f"evaluation: {len(set(prompts))} held-out prompts x {args.eval_seeds} seeds = {len(items)} images")
    runs: dict[str, dict[str, Any]] = {}
    images_of: dict[str, torch.Tensor] = {}

    def record(name: str, images: torch.Tensor, extra: dict[str, Any] | None = None) -> None:
        oracle = oracle_evaluator(prompts, images).tolist()
        reward = rewards_of(last_rewards, prompts, images)
        runs[name] = {
            "oracle": oracle,
            "reward": float(np.mean(reward)),
            "hacking": hacking_stats(items, images),
            **(extra or {}),
        }
        images_of[name] = images[:: max(1, len(items) // 12)][:12]
        s = summarise(items, oracle)
        print(
            f"  {name:<22} oracle {s['overall']:.4f} (ab {s['attribute_binding']:.4f} sp {s['spatial']:.4f} "
            f"ns {s['non_spatial']:.4f}) reward {runs[name]['reward']:+.3f} "
            f"[{(time.perf_counter() - t_start) / 60:.1f} min]",
            flush=True,
        )

    checkpoints = [m["refl"]["checkpoint"] for m in metrics]
    # p_k = base + the checkpoints of iterations 0..k-1 (an iteration whose gate stayed closed adds none).
    policies = [[c for c in checkpoints[:k] if c] for k in range(len(checkpoints) + 1)]
    for k, chain in enumerate(policies):
        images = generate(world_policy(config, chain), items, args.steps, args.guidance)
        if k == 0:
            images_all_p0 = images
        record(f"iteration {k}", images)
        if k < args.iterations:
            # R_k on p_k's own samples: the pairs ReFL of iteration k + 1 climbs on.
            own = own_sample_accuracy(args, items, images, runs[f"iteration {k}"]["oracle"], [k])
            results.setdefault("reward_accuracy_on_own_samples", {}).update(own)
            print(f"    R_{k} on p_{k}'s own samples: {own}", flush=True)
    for k in () if args.skip_baselines else (0, len(policies) - 1):
        if k == 0:
            high = generate(world_policy(config), items, args.steps, args.high_guidance)
            record(f"p0, CFG {args.high_guidance:g}", high)
        chosen = best_of_n(
            world_policy(config, policies[k]),
            prompts,
            args.best_of,
            last_rewards,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=torch.Generator().manual_seed(EVAL_NOISE_BASE + 1),
            batch_size=16,
        )
        record(f"p{k} best-of-{args.best_of}", chosen.images)
    if args.control_dir is not None:
        # Same steps, images and schedule with the rewards switched off: what the pretraining loss alone does.
        control = [
            json.loads((args.control_dir / f"iter_{k}" / "metrics.json").read_text())["refl"]["checkpoint"]
            for k in range(args.iterations)
        ]
        control_images = generate(
            world_policy(config, [c for c in control if c]), items, args.steps, args.guidance
        )
        record(f"pretraining-loss-only control p{args.iterations}", control_images)
    if not args.skip_baselines and args.oracle_best_of > 0:
        # The ceiling of reranking: the same p_0, candidates chosen by the oracle itself.
        # The first candidate is p_0's evaluation image itself, so the ceiling is never below p_0.
        candidates = [images_all_p0] + [
            generate(world_policy(config), items, args.steps, args.guidance, EVAL_NOISE_BASE + 7919 * (n + 1))
            for n in range(args.oracle_best_of - 1)
        ]
        scored = torch.tensor([oracle_evaluator(prompts, c).tolist() for c in candidates])  # [N, items]
        best = scored.argmax(0)
        ceiling = torch.stack([candidates[int(n)][i] for i, n in enumerate(best)])
        record(f"p0 oracle best-of-{args.oracle_best_of}", ceiling)

    results["reward_accuracy_on_p0"] = own_sample_accuracy(
        args, items, images_all_p0, runs["iteration 0"]["oracle"]
    )
    print(
        f"\nreward accuracy on p0's own samples (seed pairs of one prompt, oracle-ranked): {results['reward_accuracy_on_p0']}"
    )
    reference = runs["iteration 0"]["oracle"]
    table = []
    for name, run in runs.items():
        s = summarise(items, run["oracle"])
        ci = paired_bootstrap(items, reference, run["oracle"], args.bootstrap, args.seed)
        table.append(
            {"run": name, "mean": s, "vs_iteration_0": ci, "reward": run["reward"], "hacking": run["hacking"]}
        )
    results["table"] = table

    print(
        "\nOracle score on held-out prompts (mean; paired diff vs iteration 0 [95 % CI, prompts resampled])"
    )
    header = f"{'run':<22}" + "".join(f"{c:>36}" for c in ("overall", *REWARD_CATEGORIES)) + f"{'reward':>9}"
    print(header)
    for row in table:
        cells = []
        for c in ("overall", *REWARD_CATEGORIES):
            d = row["vs_iteration_0"][c]
            rel = d["diff"] / table[0]["mean"][c] if table[0]["mean"][c] else float("nan")
            cells.append(f"{row['mean'][c]:.3f} {d['diff']:+.3f} [{d['lo']:+.3f},{d['hi']:+.3f}] {rel:+.0%}")
        print(f"{row['run']:<22}" + "".join(f"{cell:>36}" for cell in cells) + f"{row['reward']:>+9.3f}")

    if args.objective == "dpo":
        print("\nDiffusion-DPO per iteration (step: held-out implicit reward accuracy / held-out loss)")
    else:
        print(
            "\nReFL reward vs oracle on validation prompts at each guard evaluation (step: reward / oracle)"
        )
    for m in metrics:
        if m.get("objective") == "dpo":
            held = [c for c in m["refl_curve"] if "val/implicit_acc" in c]
            points = "  ".join(f"{c['step']}: {c['val/implicit_acc']:.3f}/{c['val/loss']:.4f}" for c in held)
            print(
                f"  iteration {m['iteration'] + 1}: {m['refl'].get('steps')} steps on "
                f"{m['refl'].get('pairs')} pairs ({m['refl'].get('heldout_pairs')} held out) | {points}"
            )
        else:
            guard = m["refl"]["guard_history"]
            points = "  ".join(f"{g['step']}: {g['reward']:+.2f}/{g['heldout']:.3f}" for g in guard)
            print(
                f"  iteration {m['iteration'] + 1}: kept step {m['refl'].get('best_step')} "
                f"stop {m['refl'].get('stop_reason')} | {points}"
            )
        print(
            f"    D {m['dataset_before']['pairs']} -> {m['dataset_after']['pairs']} pairs; reward val acc "
            + ", ".join(f"{c} {_fmt(r['val_accuracy'])}" for c, r in m["rewards"].items())
            + (
                "; own-sample accuracy (gate) "
                + ", ".join(
                    f"{c} {_fmt(r.get('own_accuracy'))} [{_fmt(r.get('own_accuracy_ci_low'))}, "
                    f"{_fmt(r.get('own_accuracy_ci_high'))}] n={r.get('own_pairs')} "
                    f"(oracle {_fmt(_ref(r, 'own_ceiling'))}, oracle ties {_fmt(_ref(r, 'own_oracle_ties'))}, "
                    f"decidable {_fmt(_ref(r, 'own_decidable_accuracy'))}; gallery pairs "
                    f"{_fmt(_ref(r, 'gallery_accuracy'))} of oracle {_fmt(_ref(r, 'gallery_ceiling'))})"
                    for c, r in m["rewards"].items()
                )
                if any(r.get("own_pairs") for r in m["rewards"].values())
                else ""
            )
            + (f"; ReFL not started: {m['refl']['gate_closed']}" if m["refl"].get("gate_closed") else "")
            + f"; inserted {m['expansion']['inserted']:.0f}, above some human {m['expansion']['above_some_human']:.2f}"
            + (
                f" (experts: {m['expansion']['expert_above_some_human']:.2f})"
                if "expert_above_some_human" in m["expansion"]
                else ""
            )
            + f"; seconds {m['seconds']}"
        )
    plot_curves(metrics, OUT / f"refl_loop{args.tag}_curves.png")
    # p_0 .. p_K on the same noise, one row each.
    sample_grid(
        [images_of[f"iteration {k}"] for k in range(len(policies))], OUT / f"refl_loop{args.tag}_samples.png"
    )
    summary = learning_validity_summary(args, table, metrics, results)
    (OUT / f"refl_loop{args.tag}_learning_validity.json").write_text(json.dumps(summary, indent=1))
    print(f"learning-validity summary: {OUT}/refl_loop{args.tag}_learning_validity.json")
    if args.summary is not None:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(summary, indent=1))
        print(f"learning-validity summary also at {args.summary}")
    results["curves"] = [
        {"iteration": m["iteration"], "guard": m["refl"].get("guard_history", []), "dpo": m["refl_curve"]}
        if m.get("objective") == "dpo"
        else {"iteration": m["iteration"], "guard": m["refl"]["guard_history"]}
        for m in metrics
    ]
    results["loop_metrics"] = [{k: v for k, v in m.items() if k != "refl_curve"} for m in metrics]
    results["seconds"] = {"loop": round(loop_seconds), "total": round(time.perf_counter() - t_start)}
    (OUT / f"refl_loop{args.tag}.json").write_text(json.dumps(results, indent=1, default=str))
    print(
        f"\nwall time: loop {loop_seconds / 60:.1f} min, total {(time.perf_counter() - t_start) / 60:.1f} min"
    )
    print(f"plots: {OUT}/refl_loop{args.tag}_curves.png, _samples.png")


if __name__ == "__main__":
    main()
