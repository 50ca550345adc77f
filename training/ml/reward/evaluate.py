"""Held-out pairwise accuracy and loss of a reward model over prompt groups."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from training.ml.common import ProgressCallback, report_progress
from training.ml.reward.data import (
    FolderImageLoader,
    GroupBatch,
    GroupCollator,
    ImageLoader,
    PromptGroup,
    assign_splits,
    build_groups,
    dataset_fingerprint,
    read_pairs,
)
from training.ml.reward.losses import pair_accuracy, pair_weights, per_pair_loss
from training.ml.reward.model import RewardModel


@dataclasses.dataclass
class EvalCounts:
    correct: float = 0.0
    strict_pairs: int = 0
    pairs: int = 0
    loss_sum: float = 0.0
    weight_sum: float = 0.0
    by_subcategory: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def add(self, batch: GroupBatch, scores: torch.Tensor, tie_mode: str) -> None:
        scores = scores.float()
        stats = pair_accuracy(scores, batch.winners, batch.losers, batch.labels)
        self.correct += stats.correct
        self.strict_pairs += stats.strict_pairs
        self.pairs += int(batch.winners.numel())
        diff = scores[batch.winners] - scores[batch.losers]
        w = pair_weights(batch.labels, batch.weights, tie_mode)
        self.loss_sum += float((w * per_pair_loss(diff, batch.labels)).sum())
        self.weight_sum += float(w.sum())
        strict = (batch.labels != 0.5).tolist()
        right = ((diff > 0).float() + 0.5 * (diff == 0).float()).tolist()
        for sub, is_strict, r in zip(batch.pair_subcategory, strict, right, strict=True):
            if is_strict:
                entry = self.by_subcategory.setdefault(sub or "none", [0.0, 0.0])
                entry[0] += r
                entry[1] += 1

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor(
            [self.correct, self.strict_pairs, self.pairs, self.loss_sum, self.weight_sum], dtype=torch.float64
        )

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> EvalCounts:
        c, s, p, ls, ws = t.tolist()
        return cls(correct=c, strict_pairs=int(s), pairs=int(p), loss_sum=ls, weight_sum=ws)

    def metrics(self, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            f"{prefix}accuracy": self.correct / self.strict_pairs if self.strict_pairs else float("nan"),
            f"{prefix}loss": self.loss_sum / self.weight_sum if self.weight_sum else float("nan"),
            f"{prefix}strict_pairs": self.strict_pairs,
            f"{prefix}pairs": self.pairs,
        }
        for sub, (right, n) in sorted(self.by_subcategory.items()):
            out[f"{prefix}accuracy/{sub}"] = right / n
        return out


def iter_group_scores(
    model: RewardModel, groups: Sequence[PromptGroup], collator: GroupCollator, batch_groups: int = 16
) -> Iterator[tuple[GroupBatch, torch.Tensor]]:
    """Raw scores for every image of every group, ``batch_groups`` prompts at a time, no grad."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(groups), batch_groups):
                chunk = groups[start : start + batch_groups]
                batch = collator(chunk).to(model.device)
                input_ids, attention_mask = model.tokenize(batch.prompts)
                yield batch, model(batch.images, batch.prompt_index, input_ids, attention_mask)
    finally:
        model.train(was_training)


def evaluate_groups(
    model: RewardModel,
    groups: Sequence[PromptGroup],
    collator: GroupCollator,
    *,
    batch_groups: int = 16,
    tie_mode: str = "half",
    progress: ProgressCallback | None = None,
) -> EvalCounts:
    counts = EvalCounts()
    total = len(groups)
    done = 0
    for batch, scores in iter_group_scores(model, groups, collator, batch_groups):
        counts.add(batch, scores, tie_mode)
        done += len(batch.prompts)
        if not report_progress(progress, done, total, {"pairs": counts.pairs}):
            break
    return counts


def raw_score_stats(
    model: RewardModel, groups: Sequence[PromptGroup], collator: GroupCollator, batch_groups: int = 16
) -> tuple[float, float, int]:
    """Mean/std of raw scores over every (prompt, image) of ``groups`` (the normalisation)."""
    values = [scores.float().cpu() for _, scores in iter_group_scores(model, groups, collator, batch_groups)]
    if not values:
        raise ValueError("no images to compute the score normalisation on")
    flat = torch.cat(values).double()
    std = float(flat.std(unbiased=False)) if flat.numel() > 1 else 1.0
    # A degenerate (constant) model would divide by zero; keep it finite and visible in the metadata.
    return float(flat.mean()), max(std, 1e-8), int(flat.numel())


def evaluate_checkpoint_on_pairs(
    model: RewardModel,
    pairs_path: str | os.PathLike[str],
    image_loader: ImageLoader | None = None,
    image_root: str | os.PathLike[str] | None = None,
    split: str | None = "test",
    batch_groups: int = 16,
    tie_mode: str = "half",
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """CLI/API helper: accuracy of ``model`` on the pairs of its category (and ``split``, unless None)."""
    if image_loader is None:
        if image_root is None:
            raise ValueError("give image_loader or image_root")
        image_loader = FolderImageLoader(image_root)
    records = [r for r in read_pairs(pairs_path) if r.category == model.config.category]
    records = assign_splits(records)
    if split is not None:
        records = [r for r in records if r.split == split]
    groups = build_groups(records, model.config.category)
    collator = GroupCollator(image_loader, model.preprocess, "listwise", cache=False)
    counts = evaluate_groups(
        model, groups, collator, batch_groups=batch_groups, tie_mode=tie_mode, progress=progress
    )
    out = counts.metrics("")
    out["split"] = split or "all"
    out["category"] = model.config.category
    out["dataset"] = dataset_fingerprint(records)
    return out
