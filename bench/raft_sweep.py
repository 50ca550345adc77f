"""Reward-ranked fine-tuning settings on one loop run's reward models: the oracle of p_1 per setting.

RAFT's learning rate and length decide whether the denoising loss on the reward models' best-of-N samples
moves the world model at all, or so far that it forgets. This takes a finished loop run
(``bench/refl_loop.py``), its iteration-0 reward models R_0 and D_0's prompts, draws the best-of-N samples
of p_0 once with ``steps.reward_ranked_samples`` — the draws an app round with objective ``raft`` makes —
and for each setting runs ``steps.finetune`` (the app's feedback stage and the loop's step) on them, guard
off so the last step is what is measured, then scores p_1 against p_0 with the oracle on the learning-validity
bench's held-out prompts (same noise, paired bootstrap by prompt). The oracle only measures; nothing trains
on it, and no held-out prompt is a training prompt.

    .venv/bin/python bench/raft_sweep.py --loop-dir /work/runs/raft1 --candidates 4 --prompts 100 \\
        --setting 5e-5:200:8 --setting 1e-4:200:8 --setting 2e-4:200:8
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

from refl_loop import (  # noqa: E402
    EVAL_NOISE_BASE,
    eval_set,
    generate,
    hacking_stats,
    paired_bootstrap,
    summarise,
)

from training.ml.algorithm1.config import RaftStageConfig, RoundConfig  # noqa: E402
from training.ml.algorithm1.steps import (  # noqa: E402
    RewardRankedSamples,
    candidate_guidance,
    finetune,
    load_policy,
    prompt_categories,
    refl_prompts,
    reward_ranked_samples,
    routed_reward,
    world_pretrain_data,
)
from training.ml.refl.best_of_n import best_of_n  # noqa: E402
from training.ml.refl.stage import RewardSource, load_reward_fns  # noqa: E402
from training.ml.refl.trainer import RewardSpec  # noqa: E402
from training.ml.refl.world_adapter import oracle_evaluator  # noqa: E402
from training.ml.world.grammar import all_prompts  # noqa: E402
from training.ml.world.layout import render_prompt  # noqa: E402
from training.ml.world.vocab import REWARD_CATEGORY, SUBCATEGORIES  # noqa: E402

LABELS = {"AB": "attribute_binding", "SP": "spatial", "NS": "non_spatial"}
CONTROLS = ("renders", "prompt-renders")  # training data no reward model chose
# Noise for the training prompts' evaluation: clear of EVAL_NOISE_BASE's range (50,000 + 97 per image).
TRAIN_NOISE_BASE = 200_000


def train_eval_set(
    samples: list[tuple[str, torch.Tensor]], limit: int, seeds: int = 1
) -> list[tuple[str, str, int]]:
    """(prompt, subcategory, seed) for up to ``limit`` of the prompts the fine-tuning trains on, spread
    evenly over them, ``seeds`` each: does the fine-tuning learn what it is shown, before asking whether
    it transfers?"""
    subcategory = {p: sub for sub in SUBCATEGORIES for p in all_prompts(sub)}
    distinct = list(dict.fromkeys(p for p, _ in samples))
    chosen = (
        distinct if limit >= len(distinct) else [distinct[i * len(distinct) // limit] for i in range(limit)]
    )
    return [(p, subcategory[p], seed) for p in chosen for seed in range(seeds)]


@torch.no_grad()
def fit_loss(policy, samples: list[tuple[str, torch.Tensor]], limit: int = 256, draws: int = 4) -> float:
    """The world model's denoising loss on up to ``limit`` of its training images, at fixed noise and
    timesteps (the same for every model): does the deployed model fit what it was trained on?"""
    images = torch.stack([image for _, image in samples[:limit]])
    prompts = [prompt for prompt, _ in samples[:limit]]
    losses = [
        float(policy.model.training_loss(images, prompts, generator=torch.Generator().manual_seed(draw)))
        for draw in range(draws)
    ]
    return sum(losses) / len(losses)


def prompt_renders(prompts: list[str], seed: int) -> list[tuple[str, torch.Tensor]]:
    """A correct render of each prompt (a repeated prompt gets another layout each time): the data a
    perfect reward model would keep if the model drew perfectly."""
    images = []
    for i, prompt in enumerate(prompts):
        image = np.asarray(render_prompt(prompt, seed * 1_000_003 + i), dtype=np.float32) / 255.0
        images.append((prompt, torch.from_numpy(image).permute(2, 0, 1).contiguous()))
    return images


def parse_setting(text: str) -> tuple[float, int, int, float, float | None, float]:
    """lr:steps:batch[:caption dropout[:EMA decay[:noise floor]]]; an EMA decay of "-" is none."""
    lr, steps, batch, *rest = text.split(":")
    return (
        float(lr),
        int(steps),
        int(batch),
        float(rest[0]) if rest else RaftStageConfig().caption_dropout,
        float(rest[1]) if len(rest) > 1 and rest[1] != "-" else None,
        float(rest[2]) if len(rest) > 2 else RaftStageConfig().noise_floor,
    )


def ranked_samples(path: Path | None, draw, guidance: float) -> RewardRankedSamples:
    """The best-of-N draws, from ``path`` when an earlier sweep over the same loop run saved them there."""
    if path is not None and path.exists():
        saved = torch.load(path)
        if saved.get("guidance", guidance) != guidance:
            raise SystemExit(f"{path} holds candidates drawn at guidance {saved['guidance']}, not {guidance}")
        return RewardRankedSamples(
            list(zip(saved["prompts"], saved["images"], strict=True)), saved["chosen"], saved["candidates"]
        )
    ranked = draw()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "prompts": [p for p, _ in ranked.samples],
                "images": [i for _, i in ranked.samples],
                "chosen": ranked.chosen_reward,
                "candidates": ranked.candidate_reward,
                "guidance": guidance,
            },
            path,
        )
    return ranked


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loop-dir", type=Path, required=True)
    parser.add_argument(
        "--setting",
        action="append",
        type=parse_setting,
        required=True,
        help="lr:steps:batch[:caption dropout[:EMA decay (- for none)[:noise floor]]]",
    )
    parser.add_argument(
        "--data",
        choices=("kept", "renders", "prompt-renders", "mixed"),
        default="kept",
        help="what trains: the kept samples; as many correct renders of pretraining prompts instead (the "
        "control); correct renders of the training prompts themselves (what a perfect choice among "
        "perfect drawings would keep); or kept samples and renders (renders as a regulariser)",
    )
    parser.add_argument(
        "--samples-cache", type=Path, help="save the best-of-N draws here, or reuse them (same loop run)"
    )
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument(
        "--candidate-guidance",
        type=float,
        default=None,
        help="guidance the candidates are drawn at (RaftStageConfig.guidance_scale; default: the loop's)",
    )
    parser.add_argument("--prompts", type=int, default=100, help="feedback prompts per category")
    parser.add_argument(
        "--repeat", type=int, default=1, help="kept samples per prompt, each the best of its own candidates"
    )
    parser.add_argument("--lora", action="store_true", help="LoRA instead of full fine-tuning")
    parser.add_argument(
        "--warmup", type=int, default=0, help="linear learning-rate warm-up steps (all settings)"
    )
    parser.add_argument("--eval-per-sub", type=int, default=48)
    parser.add_argument("--eval-seeds", type=int, default=2)
    parser.add_argument(
        "--best-of",
        type=int,
        default=0,
        help="also rerank N samples of p_0 by R_0 (the loop bench's baseline)",
    )
    parser.add_argument(
        "--eval-train",
        type=int,
        default=0,
        help="also score p_0 and every p_1 on up to N of the training prompts (fresh noise, one seed each)",
    )
    parser.add_argument("--eval-train-seeds", type=int, default=1, help="seeds per training prompt scored")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "raft_sweep.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    loop = json.loads((args.loop_dir / "config.json").read_text())
    base_path = loop["base_model_path"]
    base_round = RoundConfig.from_dict(loop["round"])
    config = dataclasses.replace(
        base_round,
        objective="raft",
        raft=RaftStageConfig(args.candidates, guidance_scale=args.candidate_guidance),
        feedback=dataclasses.replace(
            base_round.feedback, prompts_per_category=args.prompts, guard_every=0, gate="off", lora=args.lora
        ),
    )
    fb = config.feedback
    # D_0's prompts by category, as the loop's first iteration saw them (its rankings, saved before training).
    train: dict[str, list[str]] = {}
    for entry in json.loads((args.loop_dir / "iter_0" / "rankings.json").read_text())["rankings"]:
        train.setdefault(REWARD_CATEGORY[entry["subcategory"]], []).append(entry["prompt"])
    prompts, _ = refl_prompts(config, train, {})
    categories = prompt_categories(train)
    reward_dir = args.loop_dir / "iter_0" / "reward"
    rewards = {c: reward_dir / c for c in sorted(train)}

    items = eval_set(args.eval_per_sub, args.eval_seeds)
    eval_prompts = [p for p, _, _ in items]
    assert not set(eval_prompts) & set(prompts), "held-out prompts leaked into the training prompts"
    base_policy = load_policy("world", base_path)  # sampling and scoring leave it unchanged
    base_images = generate(base_policy, items, fb.sampling_steps, fb.guidance_scale)
    base_oracle = oracle_evaluator(eval_prompts, base_images).tolist()
    print(f"p_0: {summarise(items, base_oracle)} on {len(items)} images [{time.perf_counter() - t0:.0f} s]")

    loaded = load_reward_fns(tuple(RewardSource(c, str(p), 1.0) for c, p in rewards.items()))
    routed = {"routed": RewardSpec(routed_reward({n: r.fn for n, r in loaded.items()}, categories))}
    started = time.perf_counter()
    # Each prompt ``repeat`` times: as many kept samples per prompt, each the best of its own candidates
    # (the sampling noise runs on from one draw to the next).
    drawn = [p for p in prompts for _ in range(args.repeat)]
    if args.data in CONTROLS:
        # The controls read no draws: as many correct renders as the kept samples would be.
        renders = (
            world_pretrain_data(len(drawn), config.seed)
            if args.data == "renders"
            else prompt_renders(drawn, config.seed)
        )
        ranked = RewardRankedSamples(renders, float("nan"), float("nan"))
    else:
        ranked = ranked_samples(
            args.samples_cache,
            lambda: reward_ranked_samples(config, load_policy("world", base_path), routed, drawn, 0),
            candidate_guidance(config),
        )
        assert [p for p, _ in ranked.samples] == drawn, "the cached draws are of other prompts"
    # What the training data are worth to the oracle (a measurement only; the choice was the reward models').
    kept_oracle = float(
        oracle_evaluator([p for p, _ in ranked.samples], torch.stack([i for _, i in ranked.samples])).mean()
    )
    train_items = (
        train_eval_set(ranked.samples, args.eval_train, args.eval_train_seeds) if args.eval_train > 0 else []
    )
    train_base = base_fit = None
    if train_items:
        train_prompts = [p for p, _, _ in train_items]
        train_base_images = generate(
            base_policy,
            train_items,
            fb.sampling_steps,
            fb.guidance_scale,
            TRAIN_NOISE_BASE,
        )
        train_base = oracle_evaluator(train_prompts, train_base_images).tolist()
        fit_samples = ranked.samples  # before any renders are mixed in: the same images for every model
        base_fit = fit_loss(base_policy, fit_samples)
        print(f"p_0 on {len(train_items)} training prompts: {summarise(train_items, train_base)}", flush=True)
    if args.data == "mixed":
        # Correct renders mixed in with the kept samples: do they hold the model in place? (Alone, above, they
        # separate "the data are p_0's own drawings" from "the fine-tuning itself harms the model".)
        renders = world_pretrain_data(len(drawn), config.seed)
        samples = ranked.samples + renders
        ranked = dataclasses.replace(ranked, samples=samples)
        print(f"{args.data}: {len(samples)} training images ({len(renders)} correct renders)", flush=True)
    sampling_seconds = round(time.perf_counter() - started, 1)
    if args.data in CONTROLS:
        print(f"control: {len(ranked.samples)} correct renders, oracle {kept_oracle:.3f}", flush=True)
    else:
        print(
            f"{len(ranked.samples)} kept samples, each the best of {args.candidates} at guidance {candidate_guidance(config):g}: "
            f"reward {ranked.chosen_reward:+.3f} kept vs {ranked.candidate_reward:+.3f} over all candidates; "
            f"oracle of the kept samples {kept_oracle:.3f} ({sampling_seconds:.0f} s)",
            flush=True,
        )

    baseline = None
    if args.best_of > 1:
        # The comparator RAFT distils: best-of-N reranking by the same reward models on the held-out prompts,
        # drawn exactly as bench/refl_loop.py draws its best-of-N baseline.
        eval_routed = routed_reward(
            {n: r.fn for n, r in loaded.items()}, {p: REWARD_CATEGORY[sub] for p, sub, _ in items}
        )
        chosen = best_of_n(
            load_policy("world", base_path),
            eval_prompts,
            args.best_of,
            {"routed": eval_routed},
            num_inference_steps=fb.sampling_steps,
            guidance_scale=fb.guidance_scale,
            generator=torch.Generator().manual_seed(EVAL_NOISE_BASE + 1),
            batch_size=16,
        )
        oracle = oracle_evaluator(eval_prompts, chosen.images).tolist()
        baseline = {
            "n": args.best_of,
            "oracle": summarise(items, oracle),
            "oracle_gain": paired_bootstrap(items, base_oracle, oracle, reps=2000, seed=0),
            "hacking": hacking_stats(items, chosen.images),
        }
        d = baseline["oracle_gain"]["overall"]
        print(
            f"p_0 best-of-{args.best_of} by R_0: gain {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] "
            f"[{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )

    results = []
    for lr, steps, batch, dropout, ema, floor in args.setting:
        setting = dataclasses.replace(
            config,
            feedback=dataclasses.replace(
                fb, learning_rate=lr, steps=steps, batch_size=batch, ema_decay=ema, warmup_steps=args.warmup
            ),
            raft=dataclasses.replace(config.raft, caption_dropout=dropout, noise_floor=floor),
        )
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = finetune(
                setting,
                family="world",
                base_path=base_path,
                chain=[],
                rewards=rewards,
                prompts=prompts,
                validation_prompts=[],
                output_dir=tmp,
                iteration=0,
                categories=categories,
                ranked=ranked,
            )
            policy = load_policy("world", base_path, [result.checkpoint.path])
            images = generate(policy, items, fb.sampling_steps, fb.guidance_scale)
            train_images = (
                generate(policy, train_items, fb.sampling_steps, fb.guidance_scale, TRAIN_NOISE_BASE)
                if train_items
                else None
            )
            train_fit = fit_loss(policy, fit_samples) if train_items else None
        oracle = oracle_evaluator(eval_prompts, images).tolist()
        diff = paired_bootstrap(items, base_oracle, oracle, reps=2000, seed=0)
        row = {
            "learning_rate": lr,
            "steps": steps,
            "batch_size": batch,
            "caption_dropout": dropout,
            "ema_decay": ema,
            "noise_floor": floor,
            "warmup_steps": args.warmup,
            "lora": args.lora,
            "final_loss": result.checkpoint.metrics["last"].get("loss"),
            "oracle": summarise(items, oracle),
            "oracle_gain": diff,
            "hacking": hacking_stats(items, images),
            "seconds": round(time.perf_counter() - started, 1),
        }
        if train_images is not None:
            on_train = oracle_evaluator(train_prompts, train_images).tolist()
            row["train_oracle"] = summarise(train_items, on_train)
            row["fit_loss"] = train_fit
            row["train_oracle_gain"] = paired_bootstrap(train_items, train_base, on_train, reps=2000, seed=0)
        results.append(row)
        d = diff["overall"]
        per = " ".join(f"{label} {diff[c]['diff']:+.3f}" for label, c in LABELS.items())
        print(
            f"lr {lr:g} steps {steps} batch {batch} dropout {dropout:g} EMA {ema} floor {floor:g}: oracle {row['oracle']['overall']:.3f} gain {d['diff']:+.3f} "
            f"[{d['lo']:+.3f}, {d['hi']:+.3f}] ({per}); extras {row['hacking']['extra_objects']:.3f} "
            f"({row['seconds']:.0f} s)",
            flush=True,
        )
        if train_images is not None:
            t = row["train_oracle_gain"]["overall"]
            print(
                f"  on the training prompts: gain {t['diff']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}]; "
                f"denoising loss on the training images {base_fit:.4f} -> {train_fit:.4f}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "loop_dir": str(args.loop_dir),
                "candidates": args.candidates,
                "candidate_guidance": candidate_guidance(config),
                "kept_oracle": kept_oracle,
                "data": args.data,
                "repeat": args.repeat,
                "train_prompts": len(prompts),
                "train_images": len(ranked.samples),
                # No rewards chose the control's renders.
                "chosen_reward": None if args.data in CONTROLS else ranked.chosen_reward,
                "candidate_reward": None if args.data in CONTROLS else ranked.candidate_reward,
                "sampling_seconds": sampling_seconds,
                "eval_images": len(items),
                "p0": summarise(items, base_oracle),
                "p0_hacking": hacking_stats(items, base_images),
                "train_eval_images": len(train_items),
                "p0_train": None if train_base is None else summarise(train_items, train_base),
                "p0_fit_loss": base_fit,
                "best_of_n": baseline,
                "settings": results,
                "seconds": round(time.perf_counter() - t0, 1),
            },
            indent=1,
        )
    )
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
