"""IterComp's Algorithm 1 (iterative feedback learning) on the synthetic world, without Django.

The loop drives the same steps as the app's Celery stages (:mod:`training.ml.algorithm1.steps`) with
the same round configuration (:class:`training.ml.algorithm1.config.RoundConfig`); only where the data
lives differs: PNGs in a folder and a simulated expert panel here, PostgreSQL, object storage and real
experts in the app. For k = 0 .. K-1:

1. ``run_iteration``: train the reward models (attribute_binding, spatial, non_spatial) on D_k, the
   image-rank pairs of the current rankings (D_0: the six gallery generators' images of each prompt,
   ranked by a panel of simulated expert annotators and aggregated into one consensus ordering), then
   fine-tune p_k into p_{k+1} with multi-reward ReFL (pretraining denoising loss mixed in, hacking guard
   scoring validation prompts with the oracle, the best guard evaluation kept);
2. ``expand``: sample p_{k+1} for D_k's prompts and insert each sample into its prompt's ranking by the
   reward score of that prompt's category (the human order is never changed), which gives D_{k+1}; the
   round's push-back share of the expanded groups is then re-ranked by the panel (its consensus replaces
   the provisional ranking), as the app pushes them back to the experts.

``base_in_gallery`` adds ``base_samples`` samples of p_0 to every D_0 group, ranked by the panel with the
gallery images (in the paper the base model is one of the ranked gallery models).

Everything lives under ``output_dir``: ``images/`` (PNG, the pair files point at them),
``iter_k/pairs.jsonl`` (D_k), ``iter_k/reward/<category>/`` and ``iter_k/refl/`` (checkpoints),
``iter_k/metrics.json``, and ``summary.json``. Validation prompts (guard, checkpoint choice) come from the
pretraining split but never from D's prompts; the world's held-out grammar prompts are not used at all,
so an evaluation on them (bench/refl_loop.py) stays clean.

    python -m training.ml.loop --out DIR --iterations 3 [--config loop.json] [size flags]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rankmath.aggregation import aggregate, consensus_tie_groups
from rankmath.pairs import pairs_from_ordering
from training.ml.algorithm1.config import (
    OBJECTIVES,
    FeedbackStageConfig,
    PushBackConfig,
    RewardStageConfig,
    RoundConfig,
)
from training.ml.algorithm1.gate import GateClosed, pair_accuracy, split_own_pairs
from training.ml.algorithm1.steps import (
    FinetuneResult,
    choose_prompts,
    dpo_pairs,
    expansion_prompts,
    finetune,
    finetune_dpo,
    hash_rank,
    insert_samples,
    load_policy,
    pair_images,
    pair_scores,
    pretrain_data,
    prompt_categories,
    push_back_prompts,
    refl_prompts,
    reward_scores,
    reward_train_config,
    sample_groups,
    train_reward,
)
from training.ml.common import CheckpointInfo, config_from_dict, config_to_dict, sha256_bytes
from training.ml.refl.adapters import DiffusionAdapter
from training.ml.refl.world_adapter import oracle_evaluator
from training.ml.reward.checkpoint import load_reward_model
from training.ml.reward.data import (
    FolderImageLoader,
    ImageLoader,
    PairRecord,
    assign_splits,
    read_pairs,
    write_pairs_jsonl,
)
from training.ml.world.annotators import cached_oracle_score, default_panel
from training.ml.world.gallery import GALLERY_GENERATORS
from training.ml.world.model import PRETRAINED_DIR
from training.ml.world.pretrain import training_prompts
from training.ml.world.vocab import REWARD_CATEGORIES, REWARD_CATEGORY, SUBCATEGORIES

LoopProgress = Callable[[str, int, int, Mapping[str, float]], "bool | None"]
"""``(stage, step, total, metrics)``; stage is e.g. ``"iter1/refl"``. Returning False stops that stage."""

UNCAPPED = 100_000  # "every prompt": D's prompts all train ReFL and are all expanded


def loop_round_config(seed: int = 0) -> RoundConfig:
    """The recipe that did not hurt the oracle in bench/refl_world.py, as a round configuration.

    Full fine-tuning at a low learning rate with the pretraining loss and the guard; rewards are
    normalised (mean 0, std 1 on their training images), so no 1e-3 down-scaling; the small from-scratch
    reward BLIP that learns on CPU; one new sample per prompt, nothing pushed back to the panel.
    """
    return RoundConfig(
        seed=seed,
        reward=RewardStageConfig(
            epochs=4, learning_rate=3e-4, batch_prompts=8, hidden_size=128, layers=4, patch_size=8
        ),
        feedback=FeedbackStageConfig(
            steps=80,
            learning_rate=1.5e-5,
            sampling_steps=20,
            late_steps=5,
            guidance_scale=1.0,
            reward_scale=1.0,
            batch_size=2,
            weight_decay=0.0,
            lora=False,
            pretrain_loss_weight=1.0,
            pretrain_images=256,
            guard_every=10,
            guard_patience=3,
            prompts_per_category=UNCAPPED,
            validation_prompts_per_category=UNCAPPED,
        ),
        push_back=PushBackConfig(samples_per_prompt=1, share_of_prompts=0.0, prompts_per_category=UNCAPPED),
    )


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Where the loop's data comes from (the world, the panel); ``round`` is how it trains, as in the app."""

    output_dir: str
    iterations: int = 3
    base_model_path: str = str(PRETRAINED_DIR)
    categories: tuple[str, ...] = REWARD_CATEGORIES
    # D_0: training-split prompts per category (spread evenly over its subcategories), gallery seeds each.
    prompts_per_category: int = 150
    gallery_seeds: int = 1
    annotators: int = 5  # the first n of the world's default panel (the fifth is the careless one)
    consensus_method: str = "borda"
    # Unless expert_tie_threshold > 0 the panel never marks ties; an exact tie shows up as a near-even split.
    # Consensus neighbours whose weighted support is within this of one half become tied (0.5-labelled pairs)
    # instead of a coin-flip strict label (0.1 with five experts: 3-2 splits). 0 keeps ties only where the
    # support is exactly even.
    tie_margin: float = 0.1
    # 0: the panel's experts never mark ties (every ranking strict). > 0: as in a project that allows ties,
    # each expert ties neighbours whose perceived scores differ by less than this
    # (SimulatedAnnotator.rank_groups); the consensus still applies tie_margin on top.
    expert_tie_threshold: float = 0.0
    image_size: int = 32
    # Validation prompts per subcategory for the guard; drawn from the pretraining split, never in D.
    val_prompts_per_subcategory: int = 6
    # D_0 also holds base_samples samples of p_0 per group, ranked by the panel with the gallery images.
    base_in_gallery: bool = False
    base_samples: int = 2
    # Every iteration, own_groups_per_category of D's prompts get own_group_size fresh samples of p_k,
    # ranked by the panel as a group of their own: within-model pairs for the reward models and, on a
    # held-out share of those prompts (round.reward.gate_share), the gate's accuracy on p_k's own samples.
    own_groups_per_category: int = 0
    own_group_size: int = 4
    # The reward models' pretrained encoder when round.reward.backbone is "pretrained"; None: the
    # committed world encoder.
    encoder_path: str | None = None
    round: RoundConfig = dataclasses.field(default_factory=loop_round_config)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        unknown = sorted(set(self.categories) - set(REWARD_CATEGORIES))
        if unknown or not self.categories:
            raise ValueError(f"categories must be a non-empty subset of {REWARD_CATEGORIES}, got {unknown}")
        if min(self.prompts_per_category, self.gallery_seeds, self.annotators) < 1:
            raise ValueError("prompts_per_category, gallery_seeds and annotators must be >= 1")
        if self.annotators > len(default_panel()):
            raise ValueError(f"the world's panel has {len(default_panel())} annotators")
        if self.consensus_method not in ("borda", "kemeny", "plackett_luce"):
            raise ValueError(f"unknown consensus_method {self.consensus_method!r}")
        if not 0 <= self.tie_margin < 0.5:
            raise ValueError(f"tie_margin must be in [0, 0.5), got {self.tie_margin}")
        if not 0 <= self.expert_tie_threshold < 1:
            raise ValueError(f"expert_tie_threshold must be in [0, 1), got {self.expert_tie_threshold}")
        if self.val_prompts_per_subcategory < 1:
            raise ValueError("the guard needs validation prompts (val_prompts_per_subcategory >= 1)")
        if self.base_in_gallery and self.base_samples < 1:
            raise ValueError("base_in_gallery needs base_samples >= 1")
        if self.own_groups_per_category < 0 or self.own_group_size < 2:
            raise ValueError("own_groups_per_category must be >= 0 and own_group_size >= 2")
        if not self.round.is_synthetic:
            raise ValueError("the loop runs on the synthetic world (round.base_model = 'synthetic-world')")
        object.__setattr__(self, "categories", tuple(self.categories))

    @property
    def seed(self) -> int:
        return self.round.seed


# ------------------------------------------------------------------------------------ prompts


def loop_prompts(config: LoopConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(D's prompts, validation prompts) as (prompt, subcategory); disjoint, both from the training split."""
    pool = training_prompts()
    data: list[tuple[str, str]] = []
    validation: list[tuple[str, str]] = []
    for category in config.categories:
        subs = [s for s in SUBCATEGORIES if REWARD_CATEGORY[s] == category]
        for i, sub in enumerate(subs):
            ranked = hash_rank(pool[sub], f"loop-val-{config.seed}")
            validation += [(p, sub) for p in ranked[: config.val_prompts_per_subcategory]]
            rest = hash_rank(ranked[config.val_prompts_per_subcategory :], f"loop-data-{config.seed}")
            # Even spread; the remainder goes to the first subcategories; small ones give what they have.
            want = config.prompts_per_category // len(subs) + (i < config.prompts_per_category % len(subs))
            data += [(p, sub) for p in rest[:want]]
    return data, validation


# ------------------------------------------------------------------------------------ the ranked data


@dataclasses.dataclass(frozen=True)
class StoredImage:
    id: int
    path: str  # relative to the loop's output folder
    sha256: str
    source: str  # "gallery:<generator>" ("gallery:base" for p_0's samples in D_0) or "model"
    iteration: int  # the D_k it first belongs to


@dataclasses.dataclass
class RankedPrompt:
    prompt_id: int
    prompt: str
    subcategory: str
    ordering: list[list[int]]  # best first; image ids
    human: tuple[int, ...]  # the annotator-ranked items, whose relative order insertion must keep
    group: str = "gallery"  # "gallery" (D_0's groups, expanded each iteration) or "own" (p_k's samples)

    @property
    def category(self) -> str:
        return REWARD_CATEGORY[self.subcategory]


class RankedData:
    """D_k: every prompt's ranking over stored images; pairs for the reward models come from it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images: list[StoredImage] = []
        self.prompts: list[RankedPrompt] = []
        (root / "images").mkdir(parents=True, exist_ok=True)

    def add_image(self, image: torch.Tensor | np.ndarray, source: str, iteration: int) -> int:
        """Store an image (CHW tensor or HWC array in [0, 1]) as PNG; returns its id."""
        array = image.detach().cpu().permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else image
        pixels = np.clip(np.rint(np.asarray(array, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        image_id = len(self.images)
        path = f"images/{image_id:07d}.png"
        (self.root / path).write_bytes(buffer.getvalue())
        self.images.append(StoredImage(image_id, path, sha256_bytes(buffer.getvalue()), source, iteration))
        return image_id

    def loader(self) -> FolderImageLoader:
        return FolderImageLoader(self.root)

    def load(self, image_ids: Sequence[int]) -> torch.Tensor:
        loader = self.loader()
        return torch.stack([loader(self.images[i].path, self.images[i].sha256) for i in image_ids])

    def records(self) -> list[PairRecord]:
        """All C(n, 2) pairs of every ranking (ties half-labelled), newest image's iteration as the pair's.

        A pair is human-source when the panel ranked both its images (``human``), as in the app, where a
        pushed task's ranking makes every pair of its prompt an expert pair; model-source when a reward
        score placed one of them (provisional insertion)."""
        records = []
        for entry in self.prompts:
            ranked_by_panel = set(entry.human)
            for pair in pairs_from_ordering(entry.ordering, ties="half"):
                winner, loser = self.images[pair.winner], self.images[pair.loser]
                by_panel = pair.winner in ranked_by_panel and pair.loser in ranked_by_panel
                records.append(
                    PairRecord(
                        pair_id=len(records),
                        prompt_id=entry.prompt_id,
                        prompt=entry.prompt,
                        category=entry.category,
                        subcategory=entry.subcategory,
                        split=None,
                        label=pair.label,
                        source="human" if by_panel else "model",
                        iteration=max(winner.iteration, loser.iteration),
                        **{
                            f"{side}_{field}": getattr(image, field)
                            for side, image in (("winner", winner), ("loser", loser))
                            for field in ("id", "sha256", "path")
                        },
                    )
                )
        return records

    def counts(self) -> dict[str, int]:
        records = self.records()
        return {
            "prompts": len(self.prompts),
            "images": len(self.images),
            "model_images": sum(i.source == "model" for i in self.images),
            "pairs": len(records),
            "model_pairs": sum(r.source == "model" for r in records),
        }

    def save(self, path: Path) -> Path:
        """D_k as the pair export the reward stage reads, plus the orderings themselves."""
        write_pairs_jsonl(self.records(), path)
        rankings = [dataclasses.asdict(p) for p in self.prompts]
        path.with_name("rankings.json").write_text(
            json.dumps({"images": [dataclasses.asdict(i) for i in self.images], "rankings": rankings})
        )
        return path


def expert_ranking(config: LoopConfig, data: RankedData, prompt: str, ids: Sequence[int]) -> list[list[int]]:
    """The simulated panel's consensus ordering (best first) of stored images of one prompt."""
    panel = default_panel(config.seed, tie_threshold=config.expert_tie_threshold)[: config.annotators]
    # Annotators see exactly what is stored (8-bit), not the float render.
    arrays = [data.load([i])[0] for i in ids]
    rankings = [
        [[ids[j] for j in group] for group in annotator.rank_groups(prompt, arrays)] for annotator in panel
    ]
    result = aggregate(config.consensus_method, rankings)
    return [list(g) for g in consensus_tie_groups(result, rankings, margin=config.tie_margin)]


def world_policy(config: LoopConfig, chain: Sequence[str | Path] = ()) -> DiffusionAdapter:
    """p_k: the world base model with the ReFL checkpoints of iterations 0..k-1 applied in order."""
    return load_policy("world", config.base_model_path, chain)


def rank_gallery(
    config: LoopConfig, prompts: Sequence[tuple[str, str]], root: Path, progress: LoopProgress | None = None
) -> RankedData:
    """D_0: per (prompt, gallery seed) the six generators' images (and with ``base_in_gallery`` p_0's
    samples), consensus of the annotator panel."""
    data = RankedData(root)
    groups = [(prompt, sub, seed) for prompt, sub in prompts for seed in range(config.gallery_seeds)]
    base: list[list[torch.Tensor]] = []
    if config.base_in_gallery:
        policy = world_policy(config)
        indexed = [(i, p) for i, (p, _, _) in enumerate(groups)]
        for done, images in sample_groups(config.round, policy, indexed, config.base_samples, -1):
            base += images
            if progress is not None:
                progress("gallery/base", done, len(groups), {})
    for index, (prompt, sub, seed) in enumerate(groups):
        ids = [
            data.add_image(generator.generate_array(prompt, seed, config.image_size), f"gallery:{name}", 0)
            for name, generator in GALLERY_GENERATORS.items()
        ]
        ids += [data.add_image(image, "gallery:base", 0) for image in (base[index] if base else [])]
        data.prompts.append(
            RankedPrompt(index, prompt, sub, expert_ranking(config, data, prompt, ids), tuple(ids))
        )
    return data


# ------------------------------------------------------------------------------------ one iteration


def rank_own_samples(
    config: LoopConfig,
    data: RankedData,
    policy: DiffusionAdapter,
    iteration: int,
    progress: LoopProgress | None = None,
) -> set[int]:
    """Groups of p_k's own samples for a hash-chosen set of D's prompts, ranked by the panel; their ids."""
    if config.own_groups_per_category == 0:
        return set()
    gallery = [e for e in data.prompts if e.group == "gallery"]
    by_category: dict[str, list[str]] = {}
    for entry in gallery:
        by_category.setdefault(entry.category, []).append(entry.prompt)
    chosen = set(
        choose_prompts(by_category, config.own_groups_per_category, f"own-{config.seed}-{iteration}")
    )
    entries = [e for e in gallery if e.prompt in chosen]
    entries = list({e.prompt: e for e in entries}.values())  # one group per prompt text
    # Noise far from expansion's (sample_seeds(.., k) for k < 1000): these are p_k's, not p_{k+1}'s, samples.
    groups = [(e.prompt_id, e.prompt) for e in entries]
    own: set[int] = set()
    for done, sampled in sample_groups(config.round, policy, groups, config.own_group_size, 1000 + iteration):
        for entry, images in zip(entries[done - len(sampled) : done], sampled, strict=True):
            ids = [data.add_image(image, f"own:{iteration}", iteration) for image in images]
            own.update(ids)
            ordering = expert_ranking(config, data, entry.prompt, ids)
            data.prompts.append(
                RankedPrompt(len(data.prompts), entry.prompt, entry.subcategory, ordering, tuple(ids), "own")
            )
        if progress is not None:
            progress(f"iter{iteration}/own_samples", done, len(groups), {})
    return own


@dataclasses.dataclass(frozen=True)
class IterationResult:
    rewards: dict[str, CheckpointInfo]  # R_k per category
    finetuned: FinetuneResult | None  # p_{k+1}; None when the gate kept ReFL from starting
    gate_closed: str | None = None  # why


def run_iteration(
    round_config: RoundConfig,
    *,
    iteration: int,
    records: Sequence[PairRecord],
    image_loader: ImageLoader,
    categories: Sequence[str],
    base_path: str,
    chain: Sequence[str | Path],
    train_prompts: Mapping[str, Sequence[str]],
    validation_prompts: Mapping[str, Sequence[str]],
    output_dir: Path,
    progress: LoopProgress | None = None,
    own_images: set[int] | None = None,
    encoder_path: str | None = None,
    previous_rewards: Mapping[str, Path] | None = None,
) -> IterationResult:
    """Reward models R_k on D_k, then p_k → p_{k+1} by the round's objective: the stages the app runs as
    two Celery tasks.

    ReFL: the world's oracle is the guard's held-out evaluator (it scores validation prompts to choose the
    checkpoint; it is never optimised). Diffusion-DPO (``objective = "dpo"``): on the experts' pairs of
    D_k chosen by ``dpo.pair_source`` (``own_images``: p_k's samples), with no reward model and no gate.
    """
    rewards = {
        category: train_reward(
            round_config,
            category,
            records,
            image_loader,
            output_dir / "reward" / category,
            iteration,
            pretrained_path=encoder_path,
            progress=_stage(progress, f"iter{iteration}/reward/{category}"),
            own_images=own_images,
            previous=(previous_rewards or {}).get(category),
        )
        for category in categories
    }
    if round_config.objective == "dpo":
        # Diffusion-DPO learns from the experts' pairs alone; the reward models above still place the
        # new samples (``expand``) and report their accuracy, but nothing here reads them.
        mine = [r for r in records if r.category in categories]
        train, heldout = dpo_pairs(round_config, mine, own_images or set(), iteration)
        finetuned = finetune_dpo(
            round_config,
            family="world",
            base_path=base_path,
            chain=chain,
            pairs=train,
            loader=image_loader,
            output_dir=output_dir / "dpo",
            iteration=iteration,
            heldout_pairs=heldout,
            progress=_stage(progress, f"iter{iteration}/dpo"),
        )
        return IterationResult(rewards, finetuned)
    prompts, validation = refl_prompts(round_config, train_prompts, validation_prompts)
    try:
        finetuned = finetune(
            round_config,
            family="world",
            base_path=base_path,
            chain=chain,
            rewards={c: info.path for c, info in rewards.items()},
            prompts=prompts,
            validation_prompts=validation,
            output_dir=output_dir / "refl",
            iteration=iteration,
            categories=prompt_categories(train_prompts, validation_prompts),
            pretrain=pretrain_data(round_config, "world", iteration),
            heldout=oracle_evaluator,
            progress=_stage(progress, f"iter{iteration}/refl"),
            reward_metrics={c: info.metrics for c, info in rewards.items()},
        )
    except GateClosed as closed:
        return IterationResult(rewards, None, str(closed))
    return IterationResult(rewards, finetuned)


@torch.no_grad()
def expand(
    config: LoopConfig,
    data: RankedData,
    policy: DiffusionAdapter,
    rewards: Mapping[str, CheckpointInfo],
    iteration: int,
    progress: LoopProgress | None = None,
) -> dict[str, float]:
    """Sample p_{k+1} for D_k's prompts, insert each sample by its category's reward score, and let the
    panel re-rank the round's push-back share of the expanded groups."""
    models = {c: load_reward_model(info.path).eval() for c, info in rewards.items()}
    by_category: dict[str, list[int]] = {}
    for entry in data.prompts:
        if entry.category in models and entry.group == "gallery":
            by_category.setdefault(entry.category, []).append(entry.prompt_id)
    chosen = expansion_prompts(config.round, by_category, iteration)
    pushed = push_back_prompts(config.round, chosen, iteration)
    by_id = {e.prompt_id: e for e in data.prompts}
    groups = [(pid, by_id[pid].prompt) for pid in chosen]
    per_prompt = config.round.push_back.samples_per_prompt
    inserted, above_human, expert_above_human, pushed_samples = 0, 0, 0, 0
    for done, sampled in sample_groups(config.round, policy, groups, per_prompt, iteration):
        for (prompt_id, _), images in zip(groups[done - len(sampled) : done], sampled, strict=True):
            entry = by_id[prompt_id]
            new_ids = [data.add_image(image, "model", iteration + 1) for image in images]
            ranked = [i for group in entry.ordering for i in group]
            # Score what is stored (8-bit PNG): insertion sees the pixels the next reward model trains on.
            scores = reward_scores(models[entry.category], entry.prompt, list(data.load(ranked + new_ids)))
            entry.ordering = insert_samples(
                entry.ordering, dict(zip(ranked + new_ids, scores, strict=True)), new_ids
            )
            inserted += len(new_ids)
            above_human += _above_some(entry.ordering, entry.human, new_ids)
            if prompt_id in pushed:
                # Shown in id order: the experts' answer does not depend on the provisional ranking.
                flat = sorted(i for group in entry.ordering for i in group)
                experts = expert_ranking(config, data, entry.prompt, flat)
                expert_above_human += _above_some(experts, entry.human, new_ids)
                pushed_samples += len(new_ids)
                entry.ordering = experts
                entry.human = tuple(flat)
        if progress is not None:
            progress(f"iter{iteration}/expand", done, len(groups), {"inserted": float(inserted)})
    metrics = {
        "inserted": float(inserted),
        "sampled_prompts": float(len(groups)),
        "pushed_prompts": float(len(pushed)),
        # Share of new samples placed above at least one human-ranked image (0: the rewards put them last).
        "above_some_human": above_human / inserted if inserted else 0.0,
    }
    if pushed:
        # The same share in the experts' ranking (what the provisional insertion should have predicted).
        metrics["expert_above_some_human"] = expert_above_human / pushed_samples if pushed_samples else 0.0
    return metrics


def _above_some(ordering: Sequence[Sequence[int]], human: Sequence[int], new_ids: Sequence[int]) -> int:
    """How many of ``new_ids`` are ranked above at least one of the (earlier) ``human`` items."""
    flat = [i for group in ordering for i in group]
    worst_human = max(flat.index(h) for h in human)
    return sum(flat.index(i) < worst_human for i in new_ids)


# ------------------------------------------------------------------------------------ the loop


@dataclasses.dataclass(frozen=True)
class LoopResult:
    output_dir: Path
    refl_checkpoints: list[Path]  # p_1 .. p_K
    reward_checkpoints: list[dict[str, Path]]  # R_0 .. R_{K-1}
    metrics: list[dict[str, Any]]


def run_loop(config: LoopConfig, progress: LoopProgress | None = None) -> LoopResult:
    root = Path(config.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config_to_dict(config), indent=1))
    prompts, validation = loop_prompts(config)
    validation_pool: dict[str, list[str]] = {}
    for prompt, sub in validation:
        validation_pool.setdefault(REWARD_CATEGORY[sub], []).append(prompt)
    t0 = time.perf_counter()
    data = rank_gallery(config, prompts, root, progress)
    gallery_seconds = time.perf_counter() - t0
    chain: list[Path] = []
    reward_checkpoints: list[dict[str, Path]] = []
    all_metrics: list[dict[str, Any]] = []
    for k in range(config.iterations):
        it_dir = root / f"iter_{k}"
        it_dir.mkdir(exist_ok=True)
        # D_k: the rankings so far plus this iteration's groups of p_k's own samples.
        own = rank_own_samples(config, data, world_policy(config, chain), k, progress)
        # p_k's samples also include those ``expand`` drew in the previous iteration (as the app's
        # own_images: every image of p_k's generator).
        own |= {image.id for image in data.images if image.source == "model" and image.iteration == k}
        before = data.counts()
        data.save(it_dir / "pairs.jsonl")
        train_pool: dict[str, list[str]] = {}
        for entry in data.prompts:
            train_pool.setdefault(entry.category, []).append(entry.prompt)
        t = {"start": time.perf_counter()}
        records = data.records()
        result = run_iteration(
            config.round,
            iteration=k,
            records=records,
            image_loader=data.loader(),
            categories=config.categories,
            base_path=config.base_model_path,
            chain=chain,
            train_prompts=train_pool,
            validation_prompts=validation_pool,
            output_dir=it_dir,
            progress=progress,
            own_images=own,
            encoder_path=config.encoder_path,
            previous_rewards=reward_checkpoints[-1] if reward_checkpoints else None,
        )
        t["train"] = time.perf_counter()
        _, gallery_ids = iteration_images(data.images, k)
        reference = {
            c: oracle_reference(
                config.round,
                c,
                records,
                own_images=own,
                gallery_images=gallery_ids,
                image_loader=data.loader(),
                iteration=k,
                reward_path=info.path,
            )
            for c, info in result.rewards.items()
        }
        t["reference"] = time.perf_counter()
        if result.finetuned is not None:
            chain.append(Path(result.finetuned.checkpoint.path))
        expansion = expand(config, data, world_policy(config, chain), result.rewards, k, progress)
        t["expand"] = time.perf_counter()
        metrics = {
            "iteration": k,
            "dataset_before": before,
            "dataset_after": data.counts(),
            "rewards": {
                c: {**_reward_summary(i.metrics), "reference": reference[c]}
                for c, i in result.rewards.items()
            },
            "objective": config.round.objective,
            "refl": _refl_summary(result),
            "refl_curve": result.finetuned.curve if result.finetuned is not None else [],
            "expansion": expansion,
            "seconds": {
                "gallery": round(gallery_seconds, 1) if k == 0 else 0.0,
                "rewards_and_refl": round(t["train"] - t["start"], 1),
                "oracle_reference": round(t["reference"] - t["train"], 1),
                "expand": round(t["expand"] - t["reference"], 1),
            },
        }
        (it_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
        all_metrics.append(metrics)
        reward_checkpoints.append({c: Path(i.path) for c, i in result.rewards.items()})
    final = root / f"iter_{config.iterations}"
    final.mkdir(exist_ok=True)
    data.save(final / "pairs.jsonl")
    (root / "summary.json").write_text(
        json.dumps(
            {
                "refl_checkpoints": [str(p) for p in chain],
                "reward_checkpoints": [{c: str(p) for c, p in r.items()} for r in reward_checkpoints],
                "datasets": [m["dataset_before"] for m in all_metrics] + [data.counts()],
                "validation_prompts": [p for p, _ in validation],
            },
            indent=1,
        )
    )
    return LoopResult(root, list(chain), reward_checkpoints, all_metrics)


def _reward_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("val_accuracy", "best_step", "steps", "train_prompts", "own_accuracy", "own_accuracy_ci_low")
    return {
        key: metrics.get(key)
        for key in (
            *keys,
            "own_accuracy_ci_high",
            "own_pairs",
            "normalization_source",
            "fresh_accuracy",
            "fresh_accuracy_ci_low",
            "fresh_accuracy_ci_high",
            "previous_own_accuracy",
        )
    }


# ------------------------------------------------------------------------------------ oracle reference


def iteration_images(images: Sequence[StoredImage], iteration: int) -> tuple[set[int], set[int]]:
    """(p_k's own images, the gallery's images) of D_k, as the loop hands them to the reward stage."""
    own = {
        i.id
        for i in images
        if i.source == f"own:{iteration}" or (i.source == "model" and i.iteration == iteration)
    }
    return own, {i.id for i in images if i.source.startswith("gallery:")}


def oracle_reference(
    round_config: RoundConfig,
    category: str,
    records: Sequence[PairRecord],
    *,
    own_images: set[int],
    gallery_images: set[int],
    image_loader: ImageLoader,
    iteration: int,
    reward_path: str | Path,
) -> dict[str, Any]:
    """What R_k's two accuracies are measured against, read with the world's oracle (measured only).

    The panel's strict pairs include exact oracle ties that its experts' noise ordered by chance: no
    scorer beats a coin on those, so the oracle's own accuracy on the very pairs (``*_ceiling``) is what
    any reward model can reach, and ``*_oracle_ties`` is the share of such pairs. ``own_*``: the gate's
    held-out pairs of p_k's samples (the split ``train_reward`` makes), with the reward model's accuracy on
    the oracle-decidable ones; ``gallery_*``: the reward stage's validation split restricted to pairs of two
    gallery images (its ``val_accuracy`` also counts the own-sample pairs of validation prompts)."""
    mine = [r for r in records if r.category == category]
    train, gate = split_own_pairs(
        mine, own_images, round_config.reward.gate_share, f"gate-{round_config.seed}-{iteration}"
    )
    split = reward_train_config(round_config, category, "", iteration)
    validation = [
        r
        for r in assign_splits(train, split.split_fractions, split.split_salt)
        if r.split == "val" and r.winner_id in gallery_images and r.loser_id in gallery_images
    ]
    own_strict = [r for r in gate if r.label == 1.0]
    gallery_strict = [r for r in validation if r.label == 1.0]
    # One scoring pass each: the reward model's and the oracle's scores of every image measured.
    scores = pair_scores(reward_path, own_strict + gallery_strict, image_loader)
    oracle = {
        image_id: cached_oracle_score(prompt, image_loader(path, sha))
        for prompt, group in pair_images(own_strict + gallery_strict).values()
        for image_id, (path, sha) in group.items()
    }
    seed = round_config.seed + iteration
    out: dict[str, Any] = pair_accuracy(gallery_strict, scores, seed=seed).as_metrics("gallery_")
    for name, strict in (("own", own_strict), ("gallery", gallery_strict)):
        decidable = [r for r in strict if oracle[r.winner_id] != oracle[r.loser_id]]
        out[f"{name}_ceiling"] = pair_accuracy(strict, oracle, seed=seed).accuracy
        out[f"{name}_oracle_ties"] = (len(strict) - len(decidable)) / len(strict) if strict else None
        out.update(pair_accuracy(decidable, scores, seed=seed).as_metrics(f"{name}_decidable_"))
    return out


def reference_from_dir(loop_dir: str | Path, iteration: int = 0) -> dict[str, dict[str, Any]]:
    """:func:`oracle_reference` of a saved loop's R_k, per category, from its ``iter_k`` folder."""
    root = Path(loop_dir)
    config = loop_config_from_dict(json.loads((root / "config.json").read_text()))
    it_dir = root / f"iter_{iteration}"
    stored = json.loads((it_dir / "rankings.json").read_text())["images"]
    own, gallery = iteration_images([StoredImage(**i) for i in stored], iteration)
    records = read_pairs(it_dir / "pairs.jsonl")
    return {
        category: oracle_reference(
            config.round,
            category,
            records,
            own_images=own,
            gallery_images=gallery,
            image_loader=FolderImageLoader(root),
            iteration=iteration,
            reward_path=it_dir / "reward" / category,
        )
        for category in config.categories
        if (it_dir / "reward" / category).exists()
    }


def _refl_summary(result: IterationResult) -> dict[str, Any]:
    if result.finetuned is None:
        return {"checkpoint": None, "gate_closed": result.gate_closed, "guard_history": []}
    info = result.finetuned.checkpoint
    return {**{key: v for key, v in info.metrics.items() if key != "last"}, "checkpoint": str(info.path)}


def _stage(
    progress: LoopProgress | None, name: str
) -> Callable[[int, int, Mapping[str, float]], bool | None] | None:
    if progress is None:
        return None

    def call(step: int, total: int, metrics: Mapping[str, float]) -> bool | None:
        return progress(name, step, total, metrics)

    return call


# ------------------------------------------------------------------------------------ command line


def print_progress(stage: str, step: int, total: int, metrics: Mapping[str, float]) -> None:
    # Every guard evaluation and every tenth of a stage: enough to follow a run without flooding the log.
    if step == total or "val/heldout" in metrics or step % max(1, total // 10) == 0:
        shown = {k: float(f"{v:.4g}") for k, v in metrics.items() if isinstance(v, int | float)}
        print(
            json.dumps({"stage": stage, "step": step, "total": total, **shown}), file=sys.stderr, flush=True
        )


# flag → (section of the round configuration or None for the loop's own, field)
ROUND_FLAGS: dict[str, tuple[str | None, str]] = {
    "iterations": (None, "iterations"),
    "base_model_path": (None, "base_model_path"),
    "prompts_per_category": (None, "prompts_per_category"),
    "gallery_seeds": (None, "gallery_seeds"),
    "val_prompts_per_subcategory": (None, "val_prompts_per_subcategory"),
    "base_in_gallery": (None, "base_in_gallery"),
    "base_samples": (None, "base_samples"),
    "own_groups_per_category": (None, "own_groups_per_category"),
    "own_group_size": (None, "own_group_size"),
    "gate": ("feedback", "gate"),
    "seed": ("", "seed"),
    "objective": ("", "objective"),
    "dpo_beta": ("dpo", "beta"),
    "dpo_pair_source": ("dpo", "pair_source"),
    "dpo_ties": ("dpo", "ties"),
    "raft_candidates": ("raft", "candidates"),
    "raft_caption_dropout": ("raft", "caption_dropout"),
    "raft_guidance": ("raft", "guidance_scale"),
    "raft_noise_floor": ("raft", "noise_floor"),
    "feedback_prompts_per_category": ("feedback", "prompts_per_category"),
    "reward_hidden": ("reward", "hidden_size"),
    "reward_layers": ("reward", "layers"),
    "reward_epochs": ("reward", "epochs"),
    "refl_steps": ("feedback", "steps"),
    "refl_lr": ("feedback", "learning_rate"),
    "ema_decay": ("feedback", "ema_decay"),
    "warmup_steps": ("feedback", "warmup_steps"),
    "sampling_steps": ("feedback", "sampling_steps"),
    "guidance_scale": ("feedback", "guidance_scale"),
    "reward_scale": ("feedback", "reward_scale"),
    "guard_every": ("feedback", "guard_every"),
    "pretrain_images": ("feedback", "pretrain_images"),
    "pretrain_loss_weight": ("feedback", "pretrain_loss_weight"),
    "lora": ("feedback", "lora"),
    "samples_per_prompt": ("push_back", "samples_per_prompt"),
    "sample_prompts_per_category": ("push_back", "prompts_per_category"),
    "push_back_share": ("push_back", "share_of_prompts"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.ml.loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (images, pairs, checkpoints, metrics)")
    parser.add_argument("--config", help="LoopConfig as JSON; flags given explicitly override it")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--base", dest="base_model_path", help="world base model folder")
    parser.add_argument("--prompts-per-category", type=int)
    parser.add_argument("--gallery-seeds", type=int)
    parser.add_argument("--val-prompts-per-subcategory", type=int)
    parser.add_argument("--reward-hidden", type=int)
    parser.add_argument("--reward-layers", type=int)
    parser.add_argument("--reward-epochs", type=int)
    parser.add_argument("--refl-steps", type=int, help="ReFL max steps per iteration")
    parser.add_argument("--refl-lr", type=float)
    parser.add_argument("--sampling-steps", type=int, help="DDIM steps T (ReFL, guard and expansion)")
    parser.add_argument("--guidance-scale", type=float)
    parser.add_argument("--reward-scale", type=float)
    parser.add_argument("--guard-every", type=int)
    parser.add_argument("--pretrain-images", type=int)
    parser.add_argument("--pretrain-loss-weight", type=float)
    parser.add_argument("--lora", action="store_true", default=None, help="LoRA instead of full fine-tuning")
    parser.add_argument("--samples-per-prompt", type=int)
    parser.add_argument("--sample-prompts-per-category", type=int, help="expanded prompts per category")
    parser.add_argument(
        "--base-in-gallery", action="store_true", default=None, help="D_0 also ranks p_0's own samples"
    )
    parser.add_argument("--base-samples", type=int, help="p_0 samples per D_0 group (--base-in-gallery)")
    parser.add_argument(
        "--own-groups-per-category", type=int, help="groups of p_k's samples ranked per iteration"
    )
    parser.add_argument("--own-group-size", type=int, help="samples of p_k per own-sample group")
    parser.add_argument("--gate", choices=("require", "measured", "off"), help="the ReFL gate")
    parser.add_argument(
        "--push-back-share",
        type=float,
        help="share of expanded groups the panel re-ranks after the provisional reward-score insertion",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        help="fine-tuning objective: ReFL, Diffusion-DPO or reward-ranked fine-tuning (raft)",
    )
    parser.add_argument(
        "--raft-candidates",
        type=int,
        help="samples per prompt the reward models choose from (objective raft)",
    )
    parser.add_argument(
        "--raft-caption-dropout", type=float, help="share of empty captions in RAFT's denoising loss"
    )
    parser.add_argument(
        "--raft-noise-floor",
        type=float,
        help="RAFT's denoising loss trains timesteps in [floor·T, T) only (0: every noise level)",
    )
    parser.add_argument(
        "--ema-decay", type=float, help="EMA of the fine-tuned weights, deployed and guarded (ReFL, raft)"
    )
    parser.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up of the fine-tuning")
    parser.add_argument(
        "--raft-guidance", type=float, help="guidance scale of RAFT's candidates (default: --guidance)"
    )
    parser.add_argument(
        "--feedback-prompts-per-category", type=int, help="training prompts per category of the fine-tuning"
    )
    parser.add_argument("--dpo-beta", type=float, help="Diffusion-DPO beta (objective dpo)")
    parser.add_argument(
        "--dpo-pair-source", choices=("own", "gallery", "both"), help="which expert pairs train DPO"
    )
    parser.add_argument("--dpo-ties", choices=("skip", "down_weight"), help="expert ties in DPO")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared box)")
    return parser


def config_from_args(args: argparse.Namespace) -> LoopConfig:
    data: dict[str, Any] = json.loads(Path(args.config).read_text()) if args.config else {}
    data["output_dir"] = args.out
    round_data = data.setdefault("round", config_to_dict(loop_round_config()))
    for flag, (section, name) in ROUND_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if section is None:
            data[name] = value
        elif section == "":
            round_data[name] = value
        else:
            round_data.setdefault(section, {})[name] = value
    fb = round_data.get("feedback", {})
    if args.sampling_steps is not None:
        fb["late_steps"] = min(fb.get("late_steps", args.sampling_steps), args.sampling_steps)
    return loop_config_from_dict({**data, "round": round_data})


def loop_config_from_dict(data: Mapping[str, Any]) -> LoopConfig:
    """Inverse of ``config_to_dict(LoopConfig)``: what a loop folder's ``config.json`` holds."""
    return dataclasses.replace(
        config_from_dict(LoopConfig, {k: v for k, v in data.items() if k != "round"}),
        round=RoundConfig.from_dict(data["round"]),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run_loop(config_from_args(args), print_progress)
    for m in result.metrics:
        print(
            json.dumps(
                {
                    "iteration": m["iteration"],
                    "pairs": m["dataset_before"]["pairs"],
                    "reward_val_accuracy": {c: r["val_accuracy"] for c, r in m["rewards"].items()},
                    "refl_best_step": m["refl"].get("best_step"),
                    "inserted": m["expansion"]["inserted"],
                    "checkpoint": m["refl"]["checkpoint"],
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "IterationResult",
    "LoopConfig",
    "LoopResult",
    "RankedData",
    "RankedPrompt",
    "expand",
    "expert_ranking",
    "loop_prompts",
    "loop_round_config",
    "main",
    "print_progress",
    "rank_gallery",
    "run_iteration",
    "run_loop",
    "world_policy",
]
