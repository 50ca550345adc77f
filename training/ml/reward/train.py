"""Train one reward model (one composition category) from a pair export.

``train_reward_model(config, data, progress) -> CheckpointInfo`` — the stage contract of
training/ml/common.py. AdamW + cosine schedule with warmup, gradient accumulation, mixed precision and
multi-GPU through ``accelerate``; the best epoch/step on validation pairwise accuracy is kept; the score
normalisation is measured on the training images with the selected weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from training.ml.common import (
    CheckpointInfo,
    ProgressCallback,
    config_to_dict,
    report_progress,
    seed_everything,
)
from training.ml.distributed import ddp_handlers, main_decides, sum_across
from training.ml.reward.checkpoint import KIND, save_reward_model
from training.ml.reward.config import RewardTrainConfig
from training.ml.reward.data import (
    GroupBatch,
    GroupCollator,
    GroupPair,
    ImageLoader,
    ImageRef,
    PairRecord,
    PromptGroup,
    assign_splits,
    build_groups,
    dataset_fingerprint,
    split_groups,
)
from training.ml.reward.evaluate import EvalCounts, evaluate_groups, raw_score_stats
from training.ml.reward.losses import listwise_pair_loss, pair_weights
from training.ml.reward.model import RewardModel, build_reward_model


@dataclasses.dataclass(frozen=True)
class RewardData:
    """What a reward-training stage reads.

    ``extra_images`` adds image sources to a prompt's group, keyed by prompt_id: extra ImageRefs and
    pairs whose indices address the group's images followed by the extras (e.g. mid-trajectory x0
    predictions ranked like the final images they lead to).
    """

    records: Sequence[PairRecord]
    image_loader: ImageLoader
    extra_images: Mapping[int, tuple[Sequence[ImageRef], Sequence[GroupPair]]] = dataclasses.field(
        default_factory=dict
    )


def prepare_groups(
    config: RewardTrainConfig, data: RewardData
) -> tuple[dict[str, list[PromptGroup]], dict[str, Any]]:
    category = config.model.category
    records = [r for r in data.records if r.category == category]
    if not records:
        raise ValueError(f"no pairs of category {category!r} in the data")
    records = assign_splits(records, config.split_fractions, config.split_salt)
    groups = build_groups(records, category)
    if data.extra_images:
        by_id = {g.prompt_id: i for i, g in enumerate(groups)}
        for prompt_id, (images, pairs) in data.extra_images.items():
            if prompt_id not in by_id:
                raise ValueError(f"extra images for unknown prompt_id {prompt_id}")
            groups[by_id[prompt_id]] = groups[by_id[prompt_id]].with_images(images, pairs)
    fingerprint = dataset_fingerprint(records)
    fingerprint["counts"]["extra_images"] = sum(len(images) for images, _ in data.extra_images.values())
    fingerprint["counts"]["extra_pairs"] = sum(len(pairs) for _, pairs in data.extra_images.values())
    return split_groups(groups), fingerprint


def _param_groups(model: RewardModel, config: RewardTrainConfig) -> list[dict[str, Any]]:
    head, backbone, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("head."):
            head.append(p)
        elif p.ndim < 2:
            # LayerNorm weights and biases: decaying them only fights the normalisation.
            no_decay.append(p)
        else:
            backbone.append(p)
    groups = [
        {"params": backbone, "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": no_decay, "lr": config.lr, "weight_decay": 0.0},
        {"params": head, "lr": config.head_lr or config.lr, "weight_decay": config.weight_decay},
    ]
    return [g for g in groups if g["params"]]


def _trainable_state(model: RewardModel) -> dict[str, torch.Tensor]:
    # Frozen weights never change, so only trainable ones need a copy for best-checkpoint selection.
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def _shard(groups: Sequence[PromptGroup], accelerator: Accelerator) -> list[PromptGroup]:
    return list(groups[accelerator.process_index :: accelerator.num_processes])


class _ShardCollate:
    """Collates this process's share of a global batch of groups: every N-th group from its index on.

    A global batch smaller than the number of processes (an epoch's last) leaves some processes without a
    group; they collate the batch's first group with weight 0 (DDP needs every process in every step), and
    the flag returned with the batch says so. Augmentation draws from a generator seeded by (seed, epoch,
    prompt): a group is augmented alike whichever process collates it.
    """

    def __init__(self, collator: GroupCollator, accelerator: Accelerator, seed: int) -> None:
        self.collator = collator
        self.index = accelerator.process_index
        self.count = accelerator.num_processes
        self.seed = seed
        self.epoch = 0

    def __call__(self, groups: Sequence[PromptGroup]) -> tuple[GroupBatch, bool]:
        mine = list(groups[self.index :: self.count])
        placeholder = not mine
        if placeholder:
            mine = list(groups[:1])
        seeds = None
        if self.collator.augment is not None:
            seeds = [
                (self.seed * 1_000_003 + self.epoch * 9_973 + g.prompt_id * 7_919) % (2**63 - 1) for g in mine
            ]
        batch = self.collator(mine, seeds=seeds)
        if placeholder:
            batch = dataclasses.replace(batch, weights=torch.zeros_like(batch.weights))
        return batch, placeholder


def _evaluate_distributed(
    model: RewardModel,
    groups: Sequence[PromptGroup],
    collator: GroupCollator,
    config: RewardTrainConfig,
    accelerator: Accelerator,
) -> EvalCounts:
    counts = evaluate_groups(
        model,
        _shard(groups, accelerator),
        collator,
        batch_groups=config.batch_groups,
        tie_mode=config.tie_mode,
    )
    if accelerator.num_processes > 1:
        reduced = accelerator.reduce(counts.as_tensor().to(accelerator.device), reduction="sum")
        return EvalCounts.from_tensor(reduced.cpu())
    return counts


def _fresh_accelerator(config: RewardTrainConfig) -> Accelerator:
    """An Accelerator with this stage's settings, even if an earlier stage in this process used others.

    accelerate keeps process-wide singletons and refuses a second mixed-precision setting; a long-lived
    worker runs many stages, so the per-run state is cleared. The distributed PartialState (process group)
    is kept: under a multi-GPU launch it belongs to the launcher.
    """
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        cpu=config.cpu,
        kwargs_handlers=ddp_handlers(),
    )


def train_reward_model(
    config: RewardTrainConfig, data: RewardData, progress: ProgressCallback | None = None
) -> CheckpointInfo:
    generator = seed_everything(config.seed)
    accelerator = _fresh_accelerator(config)
    splits, fingerprint = prepare_groups(config, data)
    if not splits["train"]:
        raise ValueError("no training prompts after the split")

    model = build_reward_model(config.model, seed=config.seed)
    preprocess = model.preprocess
    train_collator = GroupCollator(
        data.image_loader,
        preprocess,
        config.batching,
        config.augment,
        cache=config.cache_images,
        seed=config.seed,
    )
    eval_collator = GroupCollator(data.image_loader, preprocess, "listwise", None, cache=config.cache_images)

    # Every process iterates the same global batches (same shuffle) and collates only its share of each.
    shard_collate = _ShardCollate(train_collator, accelerator, config.seed)
    loader = DataLoader(
        splits["train"],
        batch_size=config.batch_groups,
        shuffle=True,
        collate_fn=shard_collate,
        num_workers=config.num_workers,
        generator=generator,
    )
    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr, betas=config.betas)
    steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer,
        num_warmup_steps=round(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]

    best: dict[str, Any] = {"accuracy": -1.0, "loss": math.inf, "state": None, "step": 0}
    history: list[dict[str, Any]] = []
    step = 0
    stopped = False
    epoch_times: list[float] = []
    train_image_rows = 0

    def validate() -> bool:
        counts = _evaluate_distributed(model, splits["val"], eval_collator, config, accelerator)
        metrics = counts.metrics("val_")
        metrics["step"] = step
        history.append({k: v for k, v in metrics.items() if "/" not in k})
        acc, loss = metrics["val_accuracy"], metrics["val_loss"]
        if acc > best["accuracy"] or (acc == best["accuracy"] and loss < best["loss"]):
            best.update(accuracy=acc, loss=loss, state=_trainable_state(model), step=step)
        return main_decides(
            accelerator,
            lambda: report_progress(progress, step, total_steps, {"val_accuracy": acc, "val_loss": loss}),
        )

    running, running_n = 0.0, 0
    n_batches = len(loader)
    for epoch in range(config.epochs):
        wrapped.train()
        shard_collate.epoch = epoch
        t0 = time.perf_counter()
        for index, (batch, placeholder) in enumerate(loader):
            batch = batch.to(accelerator.device)
            # Accumulated batches, and the last one of the epoch, end in an optimizer step (as accelerate's
            # accumulate() does with a prepared loader); only those synchronise the processes' gradients.
            sync = (index + 1) % config.grad_accum == 0 or index + 1 == n_batches
            with contextlib.nullcontext() if sync else accelerator.no_sync(wrapped):
                input_ids, attention_mask = model.tokenize(batch.prompts)
                scores = wrapped(batch.images, batch.prompt_index, input_ids, attention_mask)
                if not placeholder:
                    train_image_rows += batch.images.shape[0]
                # The combined batch's weighted mean: this share's weighted sum over all shares' weight,
                # times N because DDP averages the N gradients.
                weight = pair_weights(batch.labels, batch.weights.float(), config.tie_mode).sum()
                denominator = sum_across(accelerator, weight) / accelerator.num_processes
                loss = listwise_pair_loss(
                    scores.float(),
                    batch.winners,
                    batch.losers,
                    batch.labels,
                    batch.weights,
                    config.tie_mode,
                    denominator=denominator,
                )
                accelerator.backward(loss)
            running += float(sum_across(accelerator, loss.detach())) / accelerator.num_processes
            running_n += 1
            if not sync:
                continue
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            if not optimizer.step_was_skipped:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            metrics = {"loss": running / running_n, "lr": scheduler.get_last_lr()[0], "epoch": epoch}
            keep_going = main_decides(
                accelerator, lambda s=step, m=metrics: report_progress(progress, s, total_steps, m)
            )
            running, running_n = 0.0, 0
            if (
                keep_going
                and config.eval_every_steps
                and step % config.eval_every_steps == 0
                and splits["val"]
            ):
                keep_going = validate()
            if not keep_going:
                stopped = True
            if stopped or step >= total_steps:
                break
        epoch_times.append(time.perf_counter() - t0)
        if stopped or step >= total_steps:
            break
        if not config.eval_every_steps and splits["val"] and not validate():
            stopped = True
            break
    # The last stretch since the previous validation may hold the best weights too.
    if splits["val"] and not stopped and (not history or history[-1]["step"] != step):
        validate()

    accelerator.wait_for_everyone()
    if best["state"] is not None:
        model.load_state_dict(best["state"], strict=False)
    selection = "best_val_accuracy" if best["state"] is not None else "last"

    mean, std, n_scored = raw_score_stats(model, splits["train"], eval_collator, config.batch_groups)
    model.set_normalization(mean, std)
    metrics: dict[str, Any] = {
        "selection": selection,
        "best_step": best["step"] if best["state"] is not None else step,
        "steps": step,
        "total_steps": total_steps,
        "epochs_run": len(epoch_times),
        "seconds_per_epoch": sum(epoch_times) / len(epoch_times) if epoch_times else None,
        # Image-encoder forward rows spent on training batches (listwise: one per image per prompt).
        "train_image_encoder_rows": int(sum_across(accelerator, torch.tensor(train_image_rows))),
        "normalization_images": n_scored,
        "stopped_early": stopped,
        "history": history,
        "train_prompts": len(splits["train"]),
    }
    for split in ("val", "test"):
        if splits[split]:
            counts = _evaluate_distributed(model, splits[split], eval_collator, config, accelerator)
            metrics.update(counts.metrics(f"{split}_"))
    path = Path(config.output_dir)
    if accelerator.is_main_process:
        if accelerator.num_processes > 1:
            # Reduced counts carry totals only; the per-subcategory breakdown needs the full sets.
            for split in ("val", "test"):
                if splits[split]:
                    counts = evaluate_groups(
                        model,
                        splits[split],
                        eval_collator,
                        batch_groups=config.batch_groups,
                        tie_mode=config.tie_mode,
                    )
                    metrics.update(counts.metrics(f"{split}_"))
        save_reward_model(
            model,
            path,
            metrics=metrics,
            dataset=fingerprint,
            extra={"train_config": config_to_dict(config)},
        )
    accelerator.wait_for_everyone()
    return CheckpointInfo(path=path, kind=KIND, metrics=metrics, stopped_early=stopped)
