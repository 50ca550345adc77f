"""Active selection on the synthetic world: how many expert rankings does each task-priority policy need
for the reward model to rank the current model's own samples as well as random selection does?

Per seed and category:

- a *pool* of candidate ranking tasks: ``--pool-prompts`` training-split prompts of the category, each a
  group of ``--group-size`` samples of the base model p_0 (``--base``: the world base model, or the
  stronger one of issue #14) — the own-sample groups the app pushes back to the experts;
- a *held-out evaluation set* of ``--eval-prompts`` other prompts, grouped the same way and ranked by the
  simulated panel; its accuracy is the gate's (``training.ml.algorithm1.steps.own_sample_accuracy``: pair
  accuracy on expert-ranked pairs of p_0's own samples, 95 % interval resampling prompts);
- the same ``--initial-tasks`` random tasks ranked first for every policy; then ``--rounds`` times: train
  the reward model (``train_reward``, the app's and the loop's step; from ``--reward-init`` when given,
  e.g. the pretrained reward encoder of issue #14), measure it, score the pool, let the policy pick
  ``--batch-tasks`` tasks, and have the simulated panel (``--annotators`` experts per task) rank them.

Policies use the app's own code (``rankmath.selection``): ``random`` (the task's selection draw),
``uncertainty`` (``group_uncertainty`` under the current and the previous reward model, as the worker
scores tasks) and ``mix`` (``--random-share`` of the tasks keep a random priority). ``disagreement``
needs push-back rankings of the reward placement, which this bench does not simulate.

``panel_ceiling`` (per category, per seed): the oracle's own accuracy on the same held-out panel pairs —
how well *any* scorer can agree with the panel's consensus, since the simulated experts rank the oracle's
score plus noise and break its exact ties by chance. Measured only; nothing trains on the oracle.

Rankings spent = tasks ranked × annotators per task (the initial tasks included). ``rankings_ratio``: the
rankings the best policy needs (linear interpolation on its mean curve over seeds) to reach the mean
accuracy random reaches with its whole budget, divided by that budget; null when it never gets there,
when random did not improve on the shared initial point, or when random's final interval reaches 0.5
(then ``rankings_ratio_unqualified`` still shows the number, which is noise).

    .venv/bin/python bench/active_selection.py [--seeds 3] [--base DIR] [--reward-init DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rankmath.selection import (  # noqa: E402
    TaskScore,
    group_uncertainty,
    rankings_to_reach,
    selection_draw,
    task_priorities,
)
from training.ml.algorithm1.config import RewardStageConfig, RoundConfig  # noqa: E402
from training.ml.algorithm1.gate import pair_accuracy  # noqa: E402
from training.ml.algorithm1.steps import (  # noqa: E402
    hash_rank,
    own_sample_accuracy,
    reward_scores,
    sample_groups,
    train_reward,
)
from training.ml.loop import LoopConfig, RankedData, RankedPrompt, expert_ranking, loop_round_config  # noqa: E402
from training.ml.reward.checkpoint import load_reward_model  # noqa: E402
from training.ml.world.model import PRETRAINED_DIR  # noqa: E402
from training.ml.world.oracle import oracle_score  # noqa: E402
from training.ml.world.pretrain import training_prompts  # noqa: E402
from training.ml.world.vocab import REWARD_CATEGORY, SUBCATEGORIES  # noqa: E402

POLICIES = ("random", "uncertainty", "mix")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=str(PRETRAINED_DIR), help="base model folder (world family)")
    p.add_argument("--reward-init", default=None, help="pretrained reward BLIP folder to start from")
    p.add_argument("--categories", nargs="+", default=["spatial"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pool-prompts", type=int, default=120)
    p.add_argument("--eval-prompts", type=int, default=60)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--annotators", type=int, default=3, help="rankings per task (the panel's first n)")
    p.add_argument("--expert-ties", type=float, default=0.0, help="experts tie pictures perceived this close")
    p.add_argument("--initial-tasks", type=int, default=10)
    p.add_argument("--batch-tasks", type=int, default=10)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--random-share", type=float, default=0.3)
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--sampling-steps", type=int, default=20)
    p.add_argument("--reward-epochs", type=int, default=4)
    p.add_argument(
        "--reward-lr", type=float, default=None, help="reward learning rate (default: the recipe's)"
    )
    p.add_argument(
        "--freeze", type=float, default=None, help="frozen share of the pretrained encoder (default: recipe)"
    )
    p.add_argument(
        "--reward-head",
        choices=("mlp", "itm"),
        default="mlp",
        help="score head (itm: the encoder's matching head)",
    )
    p.add_argument("--reward-hidden", type=int, default=128)
    p.add_argument("--reward-layers", type=int, default=4)
    p.add_argument("--work-dir", default=str(ROOT / "bench" / "out" / "active_selection"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "active_selection.json"))
    p.add_argument("--threads", type=int, default=1)
    return p


def category_prompts(category: str, seed: int) -> list[tuple[str, str]]:
    """(prompt, subcategory) of the category's training split, hash-shuffled per seed, subcategories
    interleaved so any prefix covers all of them."""
    pools = {
        sub: hash_rank(training_prompts()[sub], f"active-{seed}")
        for sub in SUBCATEGORIES
        if REWARD_CATEGORY[sub] == category
    }
    out: list[tuple[str, str]] = []
    for i in range(max(len(v) for v in pools.values())):
        out += [(pool[i], sub) for sub, pool in sorted(pools.items()) if i < len(pool)]
    return out


@dataclasses.dataclass
class Group:
    entry: RankedPrompt  # its ordering is the panel's, filled in only once the group is ranked
    draw: float


def sample_world_groups(
    args: argparse.Namespace, loop: LoopConfig, data: RankedData, prompts: list[tuple[str, str]], offset: int
) -> list[Group]:
    """Groups of p_0's samples for ``prompts``, stored in ``data``; the panel ranks each one up front
    (deterministic), but a policy only *sees* a ranking once it pays for it."""
    from training.ml.algorithm1.steps import load_policy

    policy = load_policy("world", args.base)
    indexed = [(offset + i, p) for i, (p, _) in enumerate(prompts)]
    groups: list[Group] = []
    for done, sampled in sample_groups(loop.round, policy, indexed, args.group_size, -1):
        for (prompt_id, text), images in zip(indexed[done - len(sampled) : done], sampled, strict=True):
            sub = prompts[prompt_id - offset][1]
            ids = [data.add_image(image, "model", 0) for image in images]
            ordering = expert_ranking(loop, data, text, ids)
            entry = RankedPrompt(prompt_id, text, sub, ordering, tuple(ids), "own")
            groups.append(Group(entry, selection_draw(prompt_id, ids)))
    return groups


def add_held_out_group_args(p: argparse.ArgumentParser, name: str) -> None:
    """The options of a bench that measures on this bench's held-out evaluation groups (same prompts,
    samples and panel for the same seed and ``--pool-prompts``); results under bench/out/<name>."""
    p.add_argument("--base", default=str(PRETRAINED_DIR))
    p.add_argument("--categories", nargs="+", default=["attribute_binding", "spatial", "non_spatial"])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--pool-prompts", type=int, default=120, help="as active_selection: eval prompts follow")
    p.add_argument("--eval-prompts", type=int, default=60)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--annotators", type=int, default=3)
    p.add_argument("--expert-ties", type=float, default=0.0, help="experts tie pictures perceived this close")
    p.add_argument("--sampling-steps", type=int, default=20)
    p.add_argument("--work-dir", default=str(ROOT / "bench" / "out" / name))
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / f"{name}.json"))
    p.add_argument("--threads", type=int, default=1)


def held_out_groups(
    args: argparse.Namespace, category: str, seed: int
) -> tuple[LoopConfig, RankedData, list[tuple[str, str]], list[Group]]:
    """(loop, image store, held-out prompts, p_0's panel-ranked groups of them) for one category and seed."""
    loop, data, _ = world_setup(
        args, category, seed, loop_round_config(seed), expert_tie_threshold=args.expert_ties
    )
    prompts = category_prompts(category, seed)[args.pool_prompts : args.pool_prompts + args.eval_prompts]
    return loop, data, prompts, sample_world_groups(args, loop, data, prompts, args.pool_prompts)


def world_setup(
    args: argparse.Namespace,
    category: str,
    seed: int,
    round_config: RoundConfig,
    *,
    expert_tie_threshold: float = 0.0,
) -> tuple[LoopConfig, RankedData, Path]:
    """The loop settings (``round_config`` sampling at ``args.sampling_steps``) and the image store of one
    category and seed, under ``args.work_dir``: what every own-sample bench samples and ranks with."""
    feedback = round_config.feedback
    round_config = dataclasses.replace(
        round_config,
        feedback=dataclasses.replace(
            feedback,
            sampling_steps=args.sampling_steps,
            late_steps=min(feedback.late_steps, args.sampling_steps),
        ),
    )
    work = Path(args.work_dir) / category / f"seed{seed}"
    loop = LoopConfig(
        output_dir=str(work),
        base_model_path=args.base,
        annotators=args.annotators,
        expert_tie_threshold=expert_tie_threshold,
        round=round_config,
        categories=(category,),
    )
    return loop, RankedData(work), work


def write_result(args: argparse.Namespace, started: float, **payload: Any) -> dict[str, Any]:
    """A bench's JSON at ``args.out``: its payload, the settings it ran with, wall seconds, and the
    machine's load when written (wall-clock seconds mean little on a shared box without it)."""
    summary = {
        **payload,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work_dir")},
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    return summary


def records_of(data: RankedData, groups: list[Group]) -> list:
    view = copy.copy(data)
    view.prompts = [g.entry for g in groups]
    return view.records()


def panel_ceiling(data: RankedData, records: list, seed: int) -> dict[str, Any]:
    """The oracle's pair accuracy on the panel's held-out pairs: the ceiling of any reward model there."""
    prompts = {r.prompt_id: r.prompt for r in records}
    ids = sorted({i for r in records for i in (r.winner_id, r.loser_id)})
    image_prompt = {i: prompts[r.prompt_id] for r in records for i in (r.winner_id, r.loser_id)}
    scores = {i: oracle_score(image_prompt[i], image) for i, image in zip(ids, data.load(ids), strict=True)}
    return dataclasses.asdict(pair_accuracy(records, scores, seed=seed))


def pick(
    policy: str,
    pool: list[Group],
    models: list,
    batch: int,
    share: float,
    data: RankedData,
) -> list[Group]:
    """The ``batch`` pool groups the policy ranks first (the claim order of the app's priority column)."""
    scores: list[TaskScore] = []
    for index, group in enumerate(pool):
        uncertainty = None
        if policy != "random":
            ids = list(group.entry.human)
            pictures = list(data.load(ids))
            sets = [reward_scores(m, group.entry.prompt, pictures) for m in models]
            uncertainty = group_uncertainty(sets)
        scores.append(TaskScore(index, group.draw, uncertainty))
    priority = task_priorities(policy, scores, share)
    order = sorted(priority, key=lambda i: (-priority[i], i))
    return [pool[i] for i in order[:batch]]


def run_policy(
    args: argparse.Namespace,
    loop: LoopConfig,
    data: RankedData,
    category: str,
    policy: str,
    initial: list[Group],
    pool: list[Group],
    evaluation: list,
    seed: int,
    work: Path,
) -> list[dict[str, Any]]:
    labelled = list(initial)
    remaining = list(pool)
    models: list = []
    curve: list[dict[str, Any]] = []
    for step in range(args.rounds + 1):
        info = train_reward(
            loop.round,
            category,
            records_of(data, labelled),
            data.loader(),
            work / f"{policy}" / f"r{step}",
            0,
            pretrained_path=args.reward_init,
        )
        accuracy = own_sample_accuracy(info.path, evaluation, data.loader(), seed=seed)
        curve.append(
            {
                "rankings": len(labelled) * args.annotators,
                "tasks": len(labelled),
                "accuracy": accuracy.accuracy,
                "ci_low": accuracy.low,
                "ci_high": accuracy.high,
                "eval_pairs": accuracy.pairs,
            }
        )
        print(json.dumps({"seed": seed, "category": category, "policy": policy, **curve[-1]}), flush=True)
        if step == args.rounds:
            break
        models = [
            load_reward_model(info.path).eval(),
            *models[:1],
        ]  # current, previous: the worker's ensemble
        chosen = pick(policy, remaining, models, args.batch_tasks, args.random_share, data)
        labelled += chosen
        taken = {id(g) for g in chosen}
        remaining = [g for g in remaining if id(g) not in taken]
    return curve


def mean_curve(curves: list[list[dict[str, Any]]]) -> list[dict[str, float]]:
    """Mean accuracy over seeds at each budget, with a 95 % t-interval across seeds."""
    out = []
    for points in zip(*curves, strict=True):
        values = np.array([p["accuracy"] for p in points], dtype=float)
        half = 0.0
        if len(values) > 1:
            from scipy.stats import t

            half = float(t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
        mean = float(values.mean())
        out.append({"rankings": points[0]["rankings"], "mean": mean, "low": mean - half, "high": mean + half})
    return out


def ratio(
    random_mean: list[dict[str, float]], other_mean: list[dict[str, float]], qualified: bool = True
) -> float | None:
    """Rankings ``other`` needs for random's final mean accuracy, ÷ random's budget.

    ``qualified``: None also when random ends no better than it started (every policy shares the first
    point, so the ratio would only say how small the initial set is) or when random's final interval
    reaches 0.5 (a reward model not shown above chance gives the other policies nothing to reach: the
    ratio would measure noise).
    """
    target = random_mean[-1]["mean"]
    if qualified and (target <= random_mean[0]["mean"] or random_mean[-1]["low"] <= 0.5):
        return None
    needed = rankings_to_reach([(p["rankings"], p["mean"]) for p in other_mean], target)
    return None if needed is None else needed / random_mean[-1]["rankings"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    needed = args.initial_tasks + args.rounds * args.batch_tasks
    if needed > args.pool_prompts:
        raise SystemExit(f"the pool ({args.pool_prompts}) is smaller than the tasks ranked ({needed})")
    curves: dict[str, dict[str, list[list[dict[str, Any]]]]] = {}
    ceilings: dict[str, list[dict[str, Any]]] = {}
    for category in args.categories:
        curves[category] = {policy: [] for policy in args.policies}
        ceilings[category] = []
        for seed in range(args.seeds):
            base_round = loop_round_config(seed)
            round_config = dataclasses.replace(
                base_round,
                reward=dataclasses.replace(
                    base_round.reward,
                    epochs=args.reward_epochs,
                    learning_rate=args.reward_lr or base_round.reward.learning_rate,
                    freeze_fraction=base_round.reward.freeze_fraction if args.freeze is None else args.freeze,
                    head=args.reward_head,
                    hidden_size=args.reward_hidden,
                    layers=args.reward_layers,
                ),
            )
            assert isinstance(round_config.reward, RewardStageConfig)
            loop, data, work = world_setup(
                args, category, seed, round_config, expert_tie_threshold=args.expert_ties
            )
            prompts = category_prompts(category, seed)[: args.pool_prompts + args.eval_prompts]
            if len(prompts) < args.pool_prompts + args.eval_prompts:
                raise SystemExit(f"{category} has only {len(prompts)} training prompts")
            pool = sample_world_groups(args, loop, data, prompts[: args.pool_prompts], 0)
            evaluation = records_of(
                data, sample_world_groups(args, loop, data, prompts[args.pool_prompts :], args.pool_prompts)
            )
            ceilings[category].append(panel_ceiling(data, evaluation, seed))
            # The same random start for every policy: the first initial_tasks groups by selection draw.
            by_draw = sorted(pool, key=lambda g: -g.draw)
            initial, rest = by_draw[: args.initial_tasks], by_draw[args.initial_tasks :]
            for policy in args.policies:
                curves[category][policy].append(
                    run_policy(args, loop, data, category, policy, initial, rest, evaluation, seed, work)
                )
            write_summary(args, curves, started, complete=False, ceilings=ceilings)
    return write_summary(args, curves, started, complete=True, ceilings=ceilings)


def write_summary(
    args: argparse.Namespace,
    curves: dict[str, dict[str, list[list[dict[str, Any]]]]],
    started: float,
    complete: bool,
    ceilings: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The results so far (written after every seed, so a run stopped early still leaves its data)."""
    summary: dict[str, Any] = {"complete": complete, "categories": {}}
    ratios: list[float | None] = []
    for category, by_policy in curves.items():
        done = min(len(c) for c in by_policy.values())
        if done == 0:
            continue
        kept = {policy: c[:done] for policy, c in by_policy.items()}
        means = {policy: mean_curve(c) for policy, c in kept.items()}
        per_policy = (
            {p: ratio(means["random"], m) for p, m in means.items() if p != "random"}
            if "random" in means
            else {}
        )
        summary["categories"][category] = {
            "seeds": done,
            "mean": means,
            "per_seed": kept,
            "panel_ceiling": (ceilings or {}).get(category, [])[:done],
            "rankings_ratio": per_policy,
            # The same ratio without ratio()'s qualification, for inspection only: noise where it differs.
            "rankings_ratio_unqualified": {
                p: ratio(means["random"], m, qualified=False) for p, m in means.items() if p != "random"
            }
            if "random" in means
            else {},
        }
        known = [v for v in per_policy.values() if v is not None]
        ratios.append(min(known) if known else None)
    known = [r for r in ratios if r is not None]
    summary["rankings_ratio"] = float(np.mean(known)) if known and len(known) == len(ratios) else None
    summary["goal"] = "rankings_ratio <= 0.7 (>= 30 % fewer rankings for random's accuracy)"
    summary["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "work_dir")}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    # The machine's load when written: wall-clock seconds mean little on a shared box without it.
    summary["load_average"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(
        json.dumps(
            {
                "complete": complete,
                "rankings_ratio": summary["rankings_ratio"],
                "by_category": {c: v["rankings_ratio"] for c, v in summary["categories"].items()},
                "seconds": summary["seconds"],
            }
        )
    )
    return summary


if __name__ == "__main__":
    main()
