"""The worker side of a round: adapters between PostgreSQL/storage and Algorithm 1's steps.

Each stage reads its inputs from the database and storage, calls one step of
:mod:`training.ml.algorithm1.steps` (the code ``python -m training.ml.loop`` and the learning benchmark
run), and registers what it produced (files first, rows after, so no row ever names a partial file).

Runs only on workers: torch and the ML core are imported inside the functions.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils.text import slugify

from annotation.models import ConsensusRanking, TaskStatus
from gallery.models import Category, Generator, GeneratorKind, Image, Prompt
from training.artifacts import artifact_fetch_dir, artifact_store_dir, file_fetch
from training.ml.algorithm1.config import RoundConfig
from training.models import DiffusionCheckpoint, RewardModelCheckpoint, RoundStatus
from training.runner import StageContext
from training.services import round_log, round_record_outputs


def code_version() -> str:
    import subprocess

    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=settings.BASE_DIR,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _config(context: StageContext) -> RoundConfig:
    return RoundConfig.from_dict(context.training_round.config)


def _workdir(context: StageContext, name: str) -> Path:
    """Local scratch that survives a worker restart on the same machine (ML stages resume from it).

    Named by the round's id *and* creation time: ids restart after a database is recreated, and a
    resuming stage must never pick up another round's half-finished run.
    """
    training_round = context.training_round
    path = (
        Path(settings.WORKER_CACHE_DIR)
        / "rounds"
        / f"{training_round.pk}-{training_round.created_at:%Y%m%dT%H%M%S%f}"
        / f"it{context.iteration}"
        / name
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _categories(context: StageContext) -> list[Category]:
    return list(context.training_round.categories.order_by("position"))


def storage_image_loader() -> Callable[[str, str], Any]:
    """The reward trainer's image loader: storage name + sha256 → tensor, via the worker's file cache."""
    from PIL import Image as PILImage

    from training.ml.reward.data import pil_to_tensor

    def load(path: str, sha256: str):
        with PILImage.open(file_fetch(path, sha256)) as img:
            return pil_to_tensor(img)

    return load


def multi_process() -> int | None:
    """TRAINING_NUM_PROCESSES when a training step runs as a multi-process launch; None: in this process."""
    return settings.TRAINING_NUM_PROCESSES if settings.TRAINING_NUM_PROCESSES > 1 else None


def local_images(records) -> dict[str, str]:
    """Stored image name → local verified copy, for every image of ``records`` (a launched step's loader)."""
    images = {}
    for r in records:
        for name, sha in ((r.winner_path, r.winner_sha256), (r.loser_path, r.loser_sha256)):
            if name not in images:
                images[name] = str(file_fetch(name, sha))
    return images


def launch_step(context: StageContext, stage: str, spec: dict, label: str) -> dict:
    """Run one training step of ``training.ml.launch`` on TRAINING_NUM_PROCESSES processes and wait for it.

    Its progress reaches the round as the in-process step's does (a cancel stops it at its next step);
    what comes back is the main process's result: the one checkpoint's path and metrics, the curve.
    """
    from training.ml.launch import launch

    processes = settings.TRAINING_NUM_PROCESSES
    round_log(
        round_id=context.training_round.pk,
        message=f"{label}: training on {processes} processes (accelerate launch)",
    )
    workdir = _workdir(context, f"launch-{stage}")
    spec = {"stage": stage, **spec}
    return launch([spec], workdir, processes, progress=context.progress_callback(label))[0]


def _checkpoint_info(result: dict):
    from training.ml.common import CheckpointInfo

    info = result["checkpoint"]
    return CheckpointInfo(
        path=Path(info["path"]),
        kind=info["kind"],
        metrics=info["metrics"],
        stopped_early=info["stopped_early"],
    )


def reward_pretrained_path(config: RoundConfig) -> str | None:
    """The BLIP folder the worker names: REWARD_BLIP_PATH for a diffusers base; for the synthetic world
    WORLD_ENCODER_PATH, else the committed world encoder (the round's backbone setting decides whether
    either is used)."""
    if config.is_synthetic:
        return settings.WORLD_ENCODER_PATH or None
    return settings.REWARD_BLIP_PATH or None


def base_model(config: RoundConfig) -> tuple[str, str]:
    from training.ml.algorithm1.steps import base_model_location
    from training.ml.world.model import PRETRAINED_DIR

    return base_model_location(config, settings.WORLD_BASE_MODEL_PATH or str(PRETRAINED_DIR))


def policy_chain(training_round, iteration: int) -> list[Path]:
    """Local copies of the ReFL checkpoints of this round's iterations before ``iteration``, in order."""
    earlier = DiffusionCheckpoint.objects.filter(training_round=training_round, iteration__lt=iteration)
    return [artifact_fetch_dir(c.file.name, c.sha256) for c in earlier.order_by("iteration")]


def previous_reward_dir(training_round, category: Category, iteration: int) -> Path | None:
    """A local copy of R_{k-1} for this category (its accuracy on p_k's fresh samples), if there is one."""
    previous = RewardModelCheckpoint.objects.filter(
        training_round=training_round, category=category, iteration=iteration - 1
    ).first()
    return None if previous is None else artifact_fetch_dir(previous.file.name, previous.sha256)


def own_images(training_round, iteration: int, categories: list[Category]) -> set[int]:
    """Ids of the current model's (p_k's) images in the round's categories: the base generator's at
    iteration 0 (when the round names it), the previous iteration's fine-tuned generator after that."""
    if iteration == 0:
        generator_id = training_round.base_generator_id
    else:
        previous = DiffusionCheckpoint.objects.filter(training_round=training_round, iteration=iteration - 1)
        generator_id = previous.values_list("generator_id", flat=True).first()
    if generator_id is None:
        return set()
    return set(
        Image.objects.filter(generator_id=generator_id, prompt__category__in=categories).values_list(
            "pk", flat=True
        )
    )


def prompt_pools(categories: list[Category]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """ReFL's candidate prompts per category: train-split prompts whose gallery the experts ranked (D's
    prompts), and val-split prompts for the guard."""
    ranked = set(
        ConsensusRanking.objects.filter(task__prompt__category__in=categories).values_list(
            "task__prompt_id", flat=True
        )
    )
    train: dict[str, list[str]] = {}
    validation: dict[str, list[str]] = {}
    for prompt in Prompt.objects.filter(category__in=categories, split__in=("train", "val")).select_related(
        "category"
    ):
        if prompt.split == "val":
            validation.setdefault(prompt.category.slug, []).append(prompt.text)
        elif prompt.pk in ranked:
            train.setdefault(prompt.category.slug, []).append(prompt.text)
    return train, validation


def preferred_images(categories: list[Category]) -> Callable[[int], list]:
    """Up to n (prompt, image) pairs the experts ranked first, for a diffusers base's pretraining loss."""

    def load(n: int) -> list:
        rows = ConsensusRanking.objects.filter(
            task__prompt__category__in=categories, task__prompt__split="train"
        ).select_related("task__prompt")
        firsts: list[tuple[str, int]] = []
        for consensus in rows.order_by("task__prompt_id", "-task__iteration", "-task_id"):
            if len(firsts) >= n:
                break
            if len(consensus.ordering[0]) == 1:  # a tie for first place names no single preferred image
                firsts.append((consensus.task.prompt.text, consensus.ordering[0][0]))
        images = Image.objects.in_bulk([image_id for _, image_id in firsts])
        loader = storage_image_loader()
        return [(text, loader(images[i].file.name, images[i].sha256)) for text, i in firsts]

    return load


# --- stage 1: reward models --------------------------------------------------------------------------


def write_training_pairs(category: Category, iteration: int, target: Path) -> int:
    """D_k of one category as the pair export the reward trainer reads (the researchers' format)."""
    from annotation.exporters.pairs import PAIR_LOOKUPS, jsonl_chunks
    from annotation.selectors_training import pairs_for_training

    rows = pairs_for_training(category_slug=category.slug, upto_iteration=iteration).order_by("id")
    count = 0
    with open(target, "wb") as handle:
        for chunk in jsonl_chunks(rows.values_list(*PAIR_LOOKUPS).iterator(chunk_size=2000)):
            handle.write(chunk)
            count += chunk.count(b"\n")
    return count


def stage_train_rewards(context: StageContext) -> None:
    from training.ml.algorithm1.steps import checkpoint_config, train_reward
    from training.ml.reward import dataset_fingerprint, read_pairs

    config = _config(context)
    done = {}
    categories = _categories(context)
    mine = own_images(context.training_round, context.iteration, categories)
    for category in categories:
        existing = RewardModelCheckpoint.objects.filter(
            training_round=context.training_round, category=category, iteration=context.iteration
        ).first()
        if existing is not None:  # a resumed stage keeps what it already registered
            done[category.slug] = existing.pk
            continue
        pairs_path = _workdir(context, "pairs") / f"{category.slug}.jsonl"
        n_pairs = write_training_pairs(category, context.iteration, pairs_path)
        if n_pairs == 0:
            round_log(
                round_id=context.training_round.pk, message=f"no pairs yet for {category.name}; skipped"
            )
            continue
        round_log(
            round_id=context.training_round.pk,
            message=f"training the {category.name} reward model on {n_pairs} pairs",
        )
        records = read_pairs(pairs_path)
        output_dir = _workdir(context, "reward") / category.slug
        label = f"reward model · {category.name}"
        previous = previous_reward_dir(context.training_round, category, context.iteration)
        if multi_process():
            spec = {
                "round_config": config.to_dict(),
                "category": category.slug,
                "pairs": str(pairs_path),
                "images": local_images(records),
                "output_dir": str(output_dir),
                "iteration": context.iteration,
                "pretrained_path": reward_pretrained_path(config),
                "own_images": sorted(mine),
                "previous": None if previous is None else str(previous),
            }
            info = _checkpoint_info(launch_step(context, "reward", spec, label))
        else:
            info = train_reward(
                config,
                category.slug,
                records,
                storage_image_loader(),
                output_dir,
                context.iteration,
                pretrained_path=reward_pretrained_path(config),
                progress=context.progress_callback(label),
                own_images=mine,
                previous=previous,
            )
        round_log(round_id=context.training_round.pk, message=_own_accuracy_line(category, info.metrics))
        name, sha = artifact_store_dir(info.path, prefix="checkpoints/reward")
        checkpoint, _ = RewardModelCheckpoint.objects.update_or_create(
            training_round=context.training_round,
            category=category,
            iteration=context.iteration,
            defaults={
                "file": name,
                "sha256": sha,
                "config": checkpoint_config(info.path),
                "metrics": _jsonable({**info.metrics, **selection_context(category)}),
                "dataset_hash": dataset_fingerprint(records)["sha256"],
                "code_version": code_version(),
            },
        )
        done[category.slug] = checkpoint.pk
        # Registered first: a cancel during training still leaves this checkpoint usable.
        context.beat(force=True)
    if not done:
        raise RuntimeError("no reward model could be trained: none of the round's categories has pairs")
    for category in categories:
        if category.slug in done:
            scored = score_open_tasks(context.training_round, context.iteration, category)
            round_log(
                round_id=context.training_round.pk,
                message=f"{category.name}: {scored} open ranking tasks scored for active selection",
            )
            context.beat(force=True)
    round_record_outputs(
        round_id=context.training_round.pk, iteration=context.iteration, reward_checkpoints=done
    )


def selection_context(category: Category) -> dict[str, Any]:
    """What the accuracy-vs-cost curves need beside the gate's own-sample accuracy: the expert rankings
    spent on the category so far and the task-priority policy that chose them."""
    from annotation.models import Ranking
    from annotation.services.selection import category_policy

    policy, share = category_policy(category.pk)
    spent = Ranking.objects.filter(task__prompt__category=category, task__is_gold=False).count()
    return {"rankings_spent": spent, "selection_policy": policy, "selection_random_share": share}


def score_open_tasks(training_round, iteration: int, category: Category) -> int:
    """Active-selection scores of the category's open (non-gold) tasks from the reward model just trained,
    recorded with their priorities (``annotation.services.selection.task_scores_record``).

    - uncertainty: :func:`rankmath.selection.group_uncertainty` of each task's images under this
      iteration's reward model and, when the round has one, the previous iteration's (a two-model
      ensemble: small margins or a disagreement between them both count);
    - disagreement: for prompts with a push-back ranking, the share of its reward placement's pairs (the
      model pairs of that iteration) that the experts' consensus reversed.
    """
    from annotation.models import ConsensusRanking, PairSource, PreferencePair, RankingTask, TaskImage
    from annotation.services.selection import task_scores_record
    from rankmath.selection import group_uncertainty, placement_disagreement
    from training.ml.algorithm1.steps import reward_scores
    from training.ml.reward import load_reward_model

    checkpoints = RewardModelCheckpoint.objects.filter(
        training_round=training_round, category=category, iteration__in=(iteration - 1, iteration)
    ).order_by("-iteration")
    models = [load_reward_model(artifact_fetch_dir(c.file.name, c.sha256)).eval() for c in checkpoints]
    if not models:
        return 0
    tasks = list(
        RankingTask.objects.filter(status=TaskStatus.OPEN, prompt__category=category, is_gold=False)
        .select_related("prompt")
        .order_by("id")
    )
    images: dict[int, list[Image]] = {}
    rows = TaskImage.objects.filter(task__in=tasks).select_related("image").order_by("task_id", "position")
    for row in rows:
        images.setdefault(row.task_id, []).append(row.image)
    loader = storage_image_loader()
    uncertainty: dict[int, float] = {}
    for task in tasks:
        pictures = [loader(image.file.name, image.sha256) for image in images.get(task.pk, [])]
        if len(pictures) >= 2:
            uncertainty[task.pk] = group_uncertainty(
                [reward_scores(m, task.prompt.text, pictures) for m in models]
            )
    by_prompt: dict[int, float] = {}
    pushed_back = ConsensusRanking.objects.filter(
        task__prompt_id__in={t.prompt_id for t in tasks}, task__iteration__gte=1
    ).order_by("task__prompt_id", "-task__iteration", "-task_id")
    for consensus in pushed_back.select_related("task"):
        prompt_id = consensus.task.prompt_id
        if prompt_id in by_prompt:
            continue  # the latest push-back ranking of the prompt speaks for it
        placed = PreferencePair.objects.filter(
            prompt_id=prompt_id, source=PairSource.MODEL, iteration=consensus.task.iteration
        ).values_list("winner_id", "loser_id")
        value = placement_disagreement(consensus.ordering, list(placed))
        if value is not None:
            by_prompt[prompt_id] = value
    disagreement = {t.pk: by_prompt[t.prompt_id] for t in tasks if t.prompt_id in by_prompt}
    task_scores_record(category_id=category.pk, uncertainty=uncertainty, disagreement=disagreement)
    return len(uncertainty)


def _own_accuracy_line(category: Category, metrics: dict) -> str:
    if metrics.get("own_accuracy") is None:
        return (
            f"{category.name} reward model: no expert-ranked pairs of the current model's own samples yet, "
            "so its accuracy on them is not measured"
        )
    line = (
        f"{category.name} reward model ranks the current model's own samples at {metrics['own_accuracy']:.3f} "
        f"[{metrics['own_accuracy_ci_low']:.3f}, {metrics['own_accuracy_ci_high']:.3f}] "
        f"({metrics['own_pairs']} held-out pairs)"
    )
    if metrics.get("fresh_accuracy") is not None and metrics.get("previous_own_accuracy") is not None:
        line += (
            f"; the previous iteration's reward model ranks them at {metrics['fresh_accuracy']:.3f} "
            f"[{metrics['fresh_accuracy_ci_low']:.3f}, {metrics['fresh_accuracy_ci_high']:.3f}] "
            f"(it ranked its own model's samples at {metrics['previous_own_accuracy']:.3f})"
        )
    return line


# --- stage 2: feedback learning ----------------------------------------------------------------------


def dpo_records(context: StageContext, categories: list[Category]) -> list:
    """D_k's pairs of the round's categories, through the same pair export the reward stage writes."""
    from training.ml.reward import read_pairs

    records = []
    for category in categories:
        path = _workdir(context, "dpo-pairs") / f"{category.slug}.jsonl"
        if write_training_pairs(category, context.iteration, path):
            records += read_pairs(path)
    return records


def finetune_by_dpo(context: StageContext, config: RoundConfig, family: str, path: str):
    """p_k → p_{k+1} by Diffusion-DPO on the experts' pairs: reads no reward model and no gate.

    The reward stage before it still runs in a DPO round (its models place the new samples in the
    insertion stage and report their own-sample accuracy), but nothing it produced is read here.
    """
    from training.ml.algorithm1.steps import dpo_pairs, finetune_dpo
    from training.ml.reward import dataset_fingerprint

    categories = _categories(context)
    train, heldout = dpo_pairs(
        config,
        dpo_records(context, categories),
        own_images(context.training_round, context.iteration, categories),
        context.iteration,
    )
    decided_heldout = sum(r.label == 1.0 for r in heldout)
    round_log(
        round_id=context.training_round.pk,
        message=(
            f"Diffusion-DPO on {len(train)} expert pairs ({config.dpo.pair_source} pairs, β {config.dpo.beta:g}); "
            + (
                f"implicit reward accuracy measured on {decided_heldout} held-out pairs"
                if decided_heldout
                else "no held-out pairs (no val-split prompt ranked), so no implicit reward accuracy"
            )
        ),
    )
    chain = policy_chain(context.training_round, context.iteration)
    if multi_process():
        from training.ml.algorithm1.steps import FinetuneResult
        from training.ml.reward.data import write_pairs_jsonl

        inputs = _workdir(context, "dpo-inputs")
        spec = {
            "round_config": config.to_dict(),
            "family": family,
            "base_path": path,
            "chain": [str(c) for c in chain],
            "pairs": str(write_pairs_jsonl(train, inputs / "train.jsonl")),
            "heldout_pairs": str(write_pairs_jsonl(heldout, inputs / "heldout.jsonl")),
            "images": local_images([*train, *heldout]),
            "output_dir": str(_workdir(context, "dpo")),
            "iteration": context.iteration,
        }
        launched = launch_step(context, "dpo", spec, "Diffusion-DPO")
        result = FinetuneResult(_checkpoint_info(launched), launched["curve"])
    else:
        result = finetune_dpo(
            config,
            family=family,
            base_path=path,
            chain=chain,
            pairs=train,
            loader=storage_image_loader(),
            output_dir=_workdir(context, "dpo"),
            iteration=context.iteration,
            heldout_pairs=heldout,
            progress=context.progress_callback("Diffusion-DPO"),
        )
    return result, dataset_fingerprint(train)["sha256"]


def stage_feedback_learning(context: StageContext) -> None:
    from training.ml.algorithm1.steps import (
        finetune,
        pretrain_data,
        prompt_categories,
        refl_prompts,
    )

    config = _config(context)
    existing = DiffusionCheckpoint.objects.filter(
        training_round=context.training_round, iteration=context.iteration
    )
    if existing.exists():
        return
    family, path = base_model(config)
    if config.objective == "dpo":
        result, dataset_hash = finetune_by_dpo(context, config, family, path)
        _register_finetuned(context, config, family, path, result, dataset_hash)
        return
    reward_rows = list(
        RewardModelCheckpoint.objects.filter(
            training_round=context.training_round, iteration=context.iteration
        ).select_related("category")
    )
    rewards = {row.category.slug: artifact_fetch_dir(row.file.name, row.sha256) for row in reward_rows}
    if not rewards:
        raise RuntimeError("no reward model checkpoints for this iteration")
    categories = _categories(context)
    train_pool, validation_pool = prompt_pools(categories)
    prompts, validation = refl_prompts(config, train_pool, validation_pool)
    if not prompts:
        raise RuntimeError("no ranked training prompts in the round's categories")
    heldout = None
    if family == "world":
        from training.ml.refl.world_adapter import oracle_evaluator

        heldout = oracle_evaluator
    chain = policy_chain(context.training_round, context.iteration)
    pretrain = pretrain_data(config, family, context.iteration, preferred=preferred_images(categories))
    reward_metrics = {row.category.slug: row.metrics for row in reward_rows}
    if multi_process():
        from training.ml.algorithm1.steps import FinetuneResult
        from training.ml.launch import save_pretrain

        spec = {
            "round_config": config.to_dict(),
            "family": family,
            "base_path": path,
            "chain": [str(c) for c in chain],
            "rewards": {slug: str(p) for slug, p in rewards.items()},
            "prompts": prompts,
            "validation_prompts": validation,
            "output_dir": str(_workdir(context, "refl")),
            "iteration": context.iteration,
            "categories": prompt_categories(train_pool, validation_pool),
            "pretrain": save_pretrain(pretrain, _workdir(context, "refl-inputs") / "pretrain.safetensors"),
            "heldout": "world_oracle" if heldout is not None else None,
            "reward_metrics": _jsonable(reward_metrics),
        }
        launched = launch_step(context, "refl", spec, "feedback learning")
        result = FinetuneResult(_checkpoint_info(launched), launched["curve"])
    else:
        result = finetune(
            config,
            family=family,
            base_path=path,
            chain=chain,
            rewards=rewards,
            prompts=prompts,
            validation_prompts=validation,
            output_dir=_workdir(context, "refl"),
            iteration=context.iteration,
            categories=prompt_categories(train_pool, validation_pool),
            pretrain=pretrain,
            heldout=heldout,
            progress=context.progress_callback("feedback learning"),
            reward_metrics=reward_metrics,
        )
    dataset_hash = ",".join(sorted(str(p)[-12:] for p in rewards.values()))
    _register_finetuned(context, config, family, path, result, dataset_hash)


def _register_finetuned(
    context: StageContext, config: RoundConfig, family: str, path: str, result, dataset_hash: str
) -> None:
    """p_{k+1}: its checkpoint and generator rows (files first), its curve, the round's outputs."""
    from training.ml.algorithm1.steps import checkpoint_config

    info = result.checkpoint
    name, sha = artifact_store_dir(info.path, prefix="checkpoints/diffusion")
    base = context.training_round.base_generator
    base_name = base.name if base else ("World base" if family == "world" else Path(path).name)
    method = {"dpo": "Diffusion-DPO", "raft": "Reward-ranked fine-tuning"}.get(config.objective, "ReFL")
    with transaction.atomic():
        generator, _ = Generator.objects.get_or_create(
            slug=slugify(f"{base_name}-round{context.training_round.pk}-it{context.iteration + 1}")[:80],
            defaults={
                "name": f"{base_name} · round {context.training_round.pk} · iteration {context.iteration + 1}",
                "kind": GeneratorKind.BASE,
                "base_iteration": context.iteration + 1,
                "joined_iteration": context.iteration + 1,
                "weights_uri": name,
                "description": f"{method} fine-tuned from {base_name} in round {context.training_round.pk}.",
            },
        )
        checkpoint, _ = DiffusionCheckpoint.objects.update_or_create(
            training_round=context.training_round,
            iteration=context.iteration,
            defaults={
                "file": name,
                "sha256": sha,
                "config": checkpoint_config(info.path),
                "metrics": _jsonable(info.metrics),
                "generator": generator,
                "code_version": code_version(),
                "dataset_hash": dataset_hash,
            },
        )
    if config.objective == "dpo":
        _record_dpo_curve(context, result.curve)
    else:
        _record_guard_curve(context, info.metrics)
    round_record_outputs(
        round_id=context.training_round.pk,
        iteration=context.iteration,
        diffusion_checkpoint=checkpoint.pk,
        generator=generator.pk,
        stop_reason=info.metrics.get("stop_reason"),
    )
    context.beat(force=True)


def _record_guard_curve(context: StageContext, metrics: dict) -> None:
    from training.services import round_record_metric

    for entry in metrics.get("guard_history") or []:
        if isinstance(entry, dict) and "step" in entry:
            round_record_metric(
                round_id=context.training_round.pk,
                stage="guard",
                iteration=context.iteration,
                step=int(entry["step"]),
                data=_jsonable(entry),
            )


DPO_CURVE_POINTS = 200


def _record_dpo_curve(context: StageContext, curve: list[dict]) -> None:
    """The DPO loss and the held-out implicit reward accuracy: every held-out evaluation, and the loss at
    up to DPO_CURVE_POINTS evenly spaced steps (a long run would otherwise write a row per step)."""
    from training.services import round_record_metric

    last = max((int(e["step"]) for e in curve), default=0)
    every = max(1, -(-last // DPO_CURVE_POINTS))
    for entry in curve:
        step = int(entry["step"])
        if step % every and step != last and not any(k.startswith("val/") for k in entry):
            continue
        round_record_metric(
            round_id=context.training_round.pk,
            stage="dpo",
            iteration=context.iteration,
            step=step,
            data=_jsonable(entry),
        )


# --- stage 3: sampling -------------------------------------------------------------------------------


def _png_bytes(tensor) -> bytes:
    import numpy as np
    from PIL import Image as PILImage

    array = (tensor.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _sampling_prompts(context: StageContext, config: RoundConfig) -> list[Prompt]:
    """Train prompts whose gallery has a human consensus (the ones insertion can extend)."""
    from training.ml.algorithm1.steps import expansion_prompts

    by_category: dict[str, list[int]] = {}
    rows = ConsensusRanking.objects.filter(
        task__prompt__category__in=_categories(context), task__prompt__split="train"
    ).values_list("task__prompt__category__slug", "task__prompt_id")
    for slug, prompt_id in rows:
        by_category.setdefault(slug, []).append(prompt_id)
    ids = expansion_prompts(config, by_category, context.iteration)
    return list(Prompt.objects.filter(pk__in=ids).order_by("id"))


def stage_sampling(context: StageContext) -> None:
    from gallery.services.images import image_register
    from training.ml.algorithm1.steps import load_policy, sample_groups, sample_seeds

    config = _config(context)
    checkpoint = DiffusionCheckpoint.objects.get(
        training_round=context.training_round, iteration=context.iteration
    )
    family, path = base_model(config)
    policy = load_policy(family, path, policy_chain(context.training_round, context.iteration + 1))
    prompts = _sampling_prompts(context, config)
    per_prompt = config.push_back.samples_per_prompt
    fb = config.feedback
    created = 0
    groups = [(p.pk, p.text) for p in prompts]
    for done, sampled in sample_groups(config, policy, groups, per_prompt, context.iteration):
        for prompt, images in zip(prompts[done - len(sampled) : done], sampled, strict=True):
            seeds = sample_seeds(config, prompt.pk, per_prompt, context.iteration)
            for seed, image in zip(seeds, images, strict=True):
                registered = image_register(
                    prompt=prompt,
                    generator=checkpoint.generator,
                    image=_png_bytes(image),
                    seed=seed,
                    params={
                        "steps": fb.sampling_steps,
                        "guidance": fb.guidance_scale,
                        "scheduler": "DDIM",
                        "dtype": "float32",
                        "family": family,
                        "round": context.training_round.pk,
                        "checkpoint_sha256": checkpoint.sha256,
                    },
                    iteration=context.iteration + 1,
                )
                created += registered.created
        context.progress_callback("sampling")(done, len(prompts), {"images": float(created)})
    round_record_outputs(
        round_id=context.training_round.pk,
        iteration=context.iteration,
        sampled_prompts=[p.pk for p in prompts],
        sampled_images=created,
    )


# --- stage 4: insertion and push-back ----------------------------------------------------------------


def stage_inserting(context: StageContext) -> None:

    from annotation.services.model_pairs import model_pairs_replace
    from annotation.services.tasks import ranking_task_ensure
    from training.ml.algorithm1.steps import push_back_prompts, reward_scores
    from training.ml.reward import load_reward_model

    config = _config(context)
    checkpoint = DiffusionCheckpoint.objects.get(
        training_round=context.training_round, iteration=context.iteration
    )
    reward_models = {}
    for rm in RewardModelCheckpoint.objects.filter(
        training_round=context.training_round, iteration=context.iteration
    ):
        reward_models[rm.category_id] = load_reward_model(artifact_fetch_dir(rm.file.name, rm.sha256)).eval()
    outputs = context.training_round.outputs.get(str(context.iteration), {})
    prompt_ids = outputs.get("sampled_prompts", [])
    to_experts = push_back_prompts(config, prompt_ids, context.iteration)
    loader = storage_image_loader()
    pushed: list[int] = []
    for index, prompt in enumerate(Prompt.objects.filter(pk__in=prompt_ids).order_by("id")):
        consensus = (
            ConsensusRanking.objects.filter(task__prompt=prompt)
            .order_by("-task__iteration", "-task_id")
            .first()
        )
        model = reward_models.get(prompt.category_id)
        new_images = list(Image.objects.filter(prompt=prompt, generator=checkpoint.generator).order_by("id"))
        if consensus is None or model is None or not new_images:
            continue
        ids = [i for group in consensus.ordering for i in group]
        all_images = list(Image.objects.filter(pk__in=ids)) + new_images
        pictures = [loader(img.file.name, img.sha256) for img in all_images]
        scores = reward_scores(model, prompt.text, pictures)
        model_pairs_replace(
            prompt=prompt,
            consensus=consensus,
            new_images=new_images,
            scores={img.pk: s for img, s in zip(all_images, scores, strict=True)},
            iteration=context.iteration + 1,
        )
        if prompt.pk in to_experts:
            gallery = [img for img in all_images if img.pk in set(ids)]
            room = config.push_back.max_images_per_task - len(gallery)
            if room > 0:
                task, _ = ranking_task_ensure(
                    prompt=prompt, images=gallery + new_images[:room], iteration=context.iteration + 1
                )
                if task.status != TaskStatus.COMPLETE:
                    pushed.append(task.pk)
        context.progress_callback("inserting")(index + 1, len(prompt_ids), {"pushed": float(len(pushed))})
    round_record_outputs(round_id=context.training_round.pk, iteration=context.iteration, pushed_tasks=pushed)
    round_log(
        round_id=context.training_round.pk,
        message=f"{len(pushed)} new ranking tasks pushed to the annotators",
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


STAGES: dict[str, Callable[[StageContext], None]] = {
    RoundStatus.TRAINING_REWARDS: stage_train_rewards,
    RoundStatus.FEEDBACK_LEARNING: stage_feedback_learning,
    RoundStatus.SAMPLING: stage_sampling,
    RoundStatus.INSERTING: stage_inserting,
}
