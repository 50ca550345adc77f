"""IterComp's Algorithm 1 (iterative feedback learning) on the synthetic world, without Django.

For k = 0 .. K-1:

1. train the three composition reward models (attribute_binding, spatial, non_spatial) on D_k, the
   image-rank pairs of the current rankings (D_0: the six gallery generators' images of each prompt,
   ranked by a panel of simulated expert annotators and aggregated into one consensus ordering);
2. fine-tune p_k into p_{k+1} with multi-reward ReFL (the conservative recipe: low learning rate,
   pretraining denoising loss mixed in, hacking guard scoring validation prompts with the oracle, the
   best guard evaluation kept);
3. sample new images from p_{k+1} for D_k's prompts and insert each into its prompt's ranking by the
   reward score of that prompt's category (``annotation.pairs.insert_by_score``: the human order is never
   changed), which gives D_{k+1}.

Two options bring the loop closer to the paper, where the base model is one of the ranked gallery models
and new samples go back to the experts: ``base_in_gallery`` adds ``base_samples`` samples of p_0 to every
D_0 group, ranked by the panel with the gallery images; ``expert_pushback`` lets the panel rank each
expanded group after the provisional reward-score insertion, and its consensus replaces that ranking.

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
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rankmath.aggregation import aggregate
from rankmath.pairs import insert_by_score, pairs_from_ordering
from training.ml.common import CheckpointInfo, config_from_dict, config_to_dict, sha256_bytes
from training.ml.refl.config import GuardConfig, ReFLConfig
from training.ml.refl.sampler import sample
from training.ml.refl.stage import (
    ReFLStageConfig,
    ReFLStageData,
    RewardSource,
    apply_refl_checkpoint,
    finetune_refl,
)
from training.ml.refl.world_adapter import WorldAdapter, load_world_adapter, oracle_evaluator
from training.ml.reward.checkpoint import load_reward_model
from training.ml.reward.config import RewardModelConfig, RewardTrainConfig, TextSpec, VisionSpec
from training.ml.reward.data import FolderImageLoader, PairRecord, write_pairs_jsonl
from training.ml.reward.train import RewardData, train_reward_model
from training.ml.world.annotators import default_panel
from training.ml.world.gallery import GALLERY_GENERATORS
from training.ml.world.model import PRETRAINED_DIR
from training.ml.world.pretrain import draw_batch, training_prompts
from training.ml.world.vocab import REWARD_CATEGORIES, REWARD_CATEGORY, SUBCATEGORIES

LoopProgress = Callable[[str, int, int, Mapping[str, float]], "bool | None"]
"""``(stage, step, total, metrics)``; stage is e.g. ``"iter1/refl"``. Returning False stops that stage."""


def conservative_refl(max_steps: int = 80, seed: int = 0) -> ReFLConfig:
    """The recipe that did not hurt the oracle in bench/refl_world.py: low lr, pre-loss, guard, keep best."""
    return ReFLConfig(
        num_inference_steps=20,
        late_steps=5,
        guidance_scale=1.0,
        batch_size=2,
        max_steps=max_steps,
        learning_rate=1.5e-5,
        # Rewards are normalised (mean 0, std 1 on their training images), so no 1e-3 down-scaling.
        reward_scale=1.0,
        pretrain_loss_weight=1.0,
        weight_decay=0.0,
        train_mode="full",
        seed=seed,
        guard=GuardConfig(every=10, patience=3, restore_best_at_end=True),
    )


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    output_dir: str
    iterations: int = 3
    base_model_path: str = str(PRETRAINED_DIR)
    categories: tuple[str, ...] = REWARD_CATEGORIES
    # D_0: training-split prompts per category (spread evenly over its subcategories), gallery seeds each.
    prompts_per_category: int = 150
    gallery_seeds: int = 1
    annotators: int = 5  # the first n of the world's default panel (the fifth is the careless one)
    consensus_method: str = "borda"
    image_size: int = 32
    # Validation prompts per subcategory for the guard; drawn from the pretraining split, never in D.
    val_prompts_per_subcategory: int = 6
    # Reward models: the small from-scratch BLIP of bench/reward_world.py, retrained on D_k each iteration.
    reward_hidden: int = 128
    reward_layers: int = 4
    reward_patch: int = 8
    reward_epochs: int = 4
    reward_lr: float = 3e-4
    reward_batch_groups: int = 8
    refl: ReFLConfig = dataclasses.field(default_factory=conservative_refl)
    pretrain_images: int = 256  # correct renders for the pretraining loss of ReFL
    # Expansion: new samples per prompt of D_k; None samples every prompt, an int caps the prompts.
    samples_per_prompt: int = 1
    sample_prompts: int | None = None
    # D_0 also holds base_samples samples of p_0 per group, ranked by the panel with the gallery images.
    base_in_gallery: bool = False
    base_samples: int = 2
    # After the provisional insertion by reward score, the panel ranks the expanded group (its consensus
    # replaces the provisional ranking; every image of the group is then expert-ranked).
    expert_pushback: bool = False
    seed: int = 0

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
        if self.val_prompts_per_subcategory < 1:
            raise ValueError("the guard needs validation prompts (val_prompts_per_subcategory >= 1)")
        if min(self.reward_hidden, self.reward_layers, self.reward_epochs, self.reward_batch_groups) < 1:
            raise ValueError("reward model sizes and epochs must be >= 1")
        if self.reward_hidden % 32:
            raise ValueError("reward_hidden must be a multiple of 32 (32-wide attention heads)")
        if self.image_size % self.reward_patch:
            raise ValueError("image_size must be a multiple of reward_patch")
        if self.samples_per_prompt < 1 or (self.sample_prompts is not None and self.sample_prompts < 1):
            raise ValueError("samples_per_prompt and sample_prompts must be >= 1")
        if self.base_in_gallery and self.base_samples < 1:
            raise ValueError("base_in_gallery needs base_samples >= 1")
        # Each iteration hands on one checkpoint applied to the base model; a LoRA checkpoint would only
        # hold the last iteration's adapter, so p_k could not be rebuilt from base + checkpoint.
        if self.refl.train_mode != "full":
            raise ValueError("the loop chains iterations through full-UNet checkpoints (train_mode='full')")
        if self.refl.pretrain_loss_weight > 0 and self.pretrain_images < 1:
            raise ValueError("pretrain_loss_weight > 0 needs pretrain_images >= 1")
        object.__setattr__(self, "categories", tuple(self.categories))


# ------------------------------------------------------------------------------------ prompts


def hash_rank(prompts: Sequence[str], salt: str) -> list[str]:
    # Order-independent deterministic choice: the sets never depend on how the grammar lists prompts.
    return sorted(prompts, key=lambda p: hashlib.sha256(f"{salt}:{p}".encode()).hexdigest())


def loop_prompts(config: LoopConfig) -> tuple[list[tuple[str, str]], list[str]]:
    """(D's prompts as (prompt, subcategory), validation prompts); disjoint, both from the training split."""
    pool = training_prompts()
    data: list[tuple[str, str]] = []
    validation: list[str] = []
    for category in config.categories:
        subs = [s for s in SUBCATEGORIES if REWARD_CATEGORY[s] == category]
        for i, sub in enumerate(subs):
            ranked = hash_rank(pool[sub], f"loop-val-{config.seed}")
            validation += ranked[: config.val_prompts_per_subcategory]
            rest = hash_rank(ranked[config.val_prompts_per_subcategory :], f"loop-data-{config.seed}")
            # Even spread; the remainder goes to the first subcategories; small ones give what they have.
            want = config.prompts_per_category // len(subs) + (i < config.prompts_per_category % len(subs))
            data += [(p, sub) for p in rest[:want]]
    return data, validation


def world_pretrain_data(n: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    """Correct renders of pretraining-split prompts (the base model's own distribution) for the pre-loss."""
    images, captions = draw_batch(np.random.default_rng(seed), n, training_prompts(), uncond_prob=0.0)
    return list(zip(captions, images, strict=True))


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
        """All C(n, 2) pairs of every ranking (ties half-labelled), newest image's iteration as the pair's."""
        records = []
        for entry in self.prompts:
            for pair in pairs_from_ordering(entry.ordering, ties="half"):
                winner, loser = self.images[pair.winner], self.images[pair.loser]
                records.append(
                    PairRecord(
                        pair_id=len(records),
                        prompt_id=entry.prompt_id,
                        prompt=entry.prompt,
                        category=entry.category,
                        subcategory=entry.subcategory,
                        split=None,
                        label=pair.label,
                        source="model" if "model" in (winner.source, loser.source) else "human",
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
    panel = default_panel(config.seed)[: config.annotators]
    # Annotators see exactly what is stored (8-bit), not the float render.
    arrays = [data.load([i])[0] for i in ids]
    rankings = [[[ids[j]] for j in annotator.rank(prompt, arrays)] for annotator in panel]
    return [list(g) for g in aggregate(config.consensus_method, rankings).ordering]


def _sample_groups(
    config: LoopConfig,
    policy: WorldAdapter,
    groups: Sequence[tuple[int, str]],
    per_group: int,
    iteration: int,
) -> Iterator[tuple[int, list[list[torch.Tensor]]]]:
    """Sample ``per_group`` images for each (prompt id, prompt); yields (groups done, each group's images).

    The noise depends on (seed, prompt id, sample index, iteration); iteration -1 is D_0's base samples.
    """
    # Prompts are sampled 16 images at a time: batch 1 costs ~2x more per image on CPU.
    per_chunk = max(1, 16 // per_group)
    refl = config.refl
    for start in range(0, len(groups), per_chunk):
        chunk = groups[start : start + per_chunk]
        jobs = [(pid, prompt) for pid, prompt in chunk for _ in range(per_group)]
        seeds = [
            config.seed * 1_000_003 + pid * 10 + j + 100 * (iteration + 1)
            for pid, _ in chunk
            for j in range(per_group)
        ]
        images = sample(
            policy,
            [prompt for _, prompt in jobs],
            num_inference_steps=refl.num_inference_steps,
            guidance_scale=refl.guidance_scale,
            latents=policy.model.initial_noise(seeds),
        )
        yield (
            start + len(chunk),
            [list(images[i * per_group : (i + 1) * per_group]) for i in range(len(chunk))],
        )


def rank_gallery(
    config: LoopConfig, prompts: Sequence[tuple[str, str]], root: Path, progress: LoopProgress | None = None
) -> RankedData:
    """D_0: per (prompt, gallery seed) the six generators' images (and with ``base_in_gallery`` p_0's
    samples), consensus of the annotator panel."""
    data = RankedData(root)
    groups = [(prompt, sub, seed) for prompt, sub in prompts for seed in range(config.gallery_seeds)]
    base: list[list[torch.Tensor]] = []
    if config.base_in_gallery:
        policy = load_policy(config, None)
        for done, images in _sample_groups(
            config, policy, [(i, p) for i, (p, _, _) in enumerate(groups)], config.base_samples, -1
        ):
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


# ------------------------------------------------------------------------------------ stages


def reward_model_config(config: LoopConfig, category: str) -> RewardModelConfig:
    """The small from-scratch BLIP that learns on CPU (init std and GELU head as in bench/reward_world)."""
    heads = max(1, config.reward_hidden // 32)
    sizes = dict(
        hidden_size=config.reward_hidden,
        intermediate_size=4 * config.reward_hidden,
        num_hidden_layers=config.reward_layers,
        num_attention_heads=heads,
        initializer_range=0.05,
    )
    return RewardModelConfig.small(
        category,  # type: ignore[arg-type]
        vision=VisionSpec(**sizes, image_size=config.image_size, patch_size=config.reward_patch),
        text=TextSpec(**sizes),
        head_activation="gelu",
        head_init="pytorch",
        head_dropout=(0.0,) * 4,
        freeze_fraction=0.0,
    )


def train_rewards(
    config: LoopConfig, data: RankedData, iteration: int, out: Path, progress: LoopProgress | None = None
) -> dict[str, CheckpointInfo]:
    records = data.records()
    infos = {}
    for category in config.categories:
        train_config = RewardTrainConfig(
            model=reward_model_config(config, category),
            output_dir=str(out / category),
            epochs=config.reward_epochs,
            batch_groups=config.reward_batch_groups,
            lr=config.reward_lr,
            # Validation prompts choose the epoch; no test split, every other prompt trains.
            split_fractions=(0.9, 0.1, 0.0),
            seed=config.seed + iteration,
        )
        infos[category] = train_reward_model(
            train_config,
            RewardData(records, data.loader()),
            _stage(progress, f"iter{iteration}/reward/{category}"),
        )
    return infos


def load_policy(config: LoopConfig, refl_checkpoint: str | Path | None) -> WorldAdapter:
    """p_k: the base model, with iteration k-1's ReFL checkpoint (a full UNet) applied when k > 0."""
    adapter = load_world_adapter(config.base_model_path)
    if refl_checkpoint is not None:
        apply_refl_checkpoint(adapter, refl_checkpoint)
    return adapter


def finetune(
    config: LoopConfig,
    iteration: int,
    rewards: Mapping[str, CheckpointInfo],
    prompts: Sequence[str],
    validation: Sequence[str],
    previous: str | Path | None,
    out: Path,
    progress: LoopProgress | None = None,
) -> tuple[CheckpointInfo, list[dict[str, float]]]:
    """p_k → p_{k+1}; also returns the per-step curve (train reward; val reward and oracle at guard steps)."""
    refl = dataclasses.replace(config.refl, seed=config.refl.seed + iteration)
    curve: list[dict[str, float]] = []
    forward = _stage(progress, f"iter{iteration}/refl")

    def record(step: int, total: int, metrics: Mapping[str, float]) -> bool | None:
        keep = {k: float(v) for k, v in metrics.items() if k == "reward" or k.startswith("val/")}
        curve.append({"step": step, **keep})
        return forward(step, total, metrics) if forward is not None else None

    stage = ReFLStageConfig(
        refl=refl,
        output_dir=str(out),
        family="world",
        base_model_path=config.base_model_path,
        rewards=tuple(RewardSource(c, str(info.path), 1.0) for c, info in rewards.items()),
    )
    pretrain = (
        world_pretrain_data(config.pretrain_images, config.seed + iteration)
        if refl.pretrain_loss_weight
        else None
    )
    info = finetune_refl(
        stage,
        ReFLStageData(
            prompts=list(prompts),
            validation_prompts=list(validation),
            pretrain_data=pretrain,
            adapter=load_policy(config, previous),
            heldout=oracle_evaluator if refl.guard.enabled else None,
        ),
        record,
    )
    return info, curve


@torch.no_grad()
def expand(
    config: LoopConfig,
    data: RankedData,
    policy: WorldAdapter,
    rewards: Mapping[str, CheckpointInfo],
    iteration: int,
    progress: LoopProgress | None = None,
) -> dict[str, float]:
    """Sample p_{k+1} for D_k's prompts and insert each sample by its category's reward score."""
    models = {c: load_reward_model(info.path).eval() for c, info in rewards.items()}
    entries = [p for p in data.prompts if p.category in models]
    if config.sample_prompts is not None:
        chosen = set(
            hash_rank([str(p.prompt_id) for p in entries], f"sample-{iteration}")[: config.sample_prompts]
        )
        entries = [p for p in entries if str(p.prompt_id) in chosen]
    inserted, above_human, expert_above_human = 0, 0, 0
    by_id = {e.prompt_id: e for e in entries}
    groups = [(e.prompt_id, e.prompt) for e in entries]
    for done, sampled in _sample_groups(config, policy, groups, config.samples_per_prompt, iteration):
        for (prompt_id, _), images in zip(groups[done - len(sampled) : done], sampled, strict=True):
            entry = by_id[prompt_id]
            new_ids = [data.add_image(image, "model", iteration + 1) for image in images]
            ranked = [i for group in entry.ordering for i in group]
            # Score what is stored (8-bit PNG): insertion sees the pixels the next reward model trains on.
            scores = models[entry.category].score(
                [entry.prompt] * (len(ranked) + len(new_ids)), data.load(ranked + new_ids)
            )
            values = dict(zip(ranked + new_ids, scores.tolist(), strict=True))
            entry.ordering = insert_by_score(
                entry.ordering, {i: values[i] for i in ranked}, {i: values[i] for i in new_ids}
            )
            inserted += len(new_ids)
            above_human += _above_some(entry.ordering, entry.human, new_ids)
            if config.expert_pushback:
                # Shown in id order: the experts' answer does not depend on the provisional ranking.
                flat = sorted(i for group in entry.ordering for i in group)
                experts = expert_ranking(config, data, entry.prompt, flat)
                expert_above_human += _above_some(experts, entry.human, new_ids)
                entry.ordering = experts
                entry.human = tuple(flat)
        if progress is not None:
            progress(f"iter{iteration}/expand", done, len(entries), {"inserted": float(inserted)})
    metrics = {
        "inserted": float(inserted),
        "sampled_prompts": float(len(entries)),
        # Share of new samples placed above at least one human-ranked image (0: the rewards put them last).
        "above_some_human": above_human / inserted if inserted else 0.0,
    }
    if config.expert_pushback:
        # The same share in the experts' ranking (what the provisional insertion should have predicted).
        metrics["expert_above_some_human"] = expert_above_human / inserted if inserted else 0.0
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
    t0 = time.perf_counter()
    data = rank_gallery(config, prompts, root, progress)
    gallery_seconds = time.perf_counter() - t0
    train_prompts = sorted({p.prompt for p in data.prompts})
    previous: Path | None = None
    refl_checkpoints: list[Path] = []
    reward_checkpoints: list[dict[str, Path]] = []
    all_metrics: list[dict[str, Any]] = []
    for k in range(config.iterations):
        it_dir = root / f"iter_{k}"
        it_dir.mkdir(exist_ok=True)
        before = data.counts()
        data.save(it_dir / "pairs.jsonl")
        t = {"start": time.perf_counter()}
        rewards = train_rewards(config, data, k, it_dir / "reward", progress)
        t["rewards"] = time.perf_counter()
        info, curve = finetune(
            config, k, rewards, train_prompts, validation, previous, it_dir / "refl", progress
        )
        t["refl"] = time.perf_counter()
        policy = load_policy(config, info.path)
        expansion = expand(config, data, policy, rewards, k, progress)
        t["expand"] = time.perf_counter()
        metrics = {
            "iteration": k,
            "dataset_before": before,
            "dataset_after": data.counts(),
            "rewards": {
                c: {
                    key: i.metrics.get(key) for key in ("val_accuracy", "best_step", "steps", "train_prompts")
                }
                for c, i in rewards.items()
            },
            "refl": {
                **{key: v for key, v in info.metrics.items() if key != "last"},
                "checkpoint": str(info.path),
            },
            "refl_curve": curve,
            "expansion": expansion,
            "seconds": {
                "gallery": round(gallery_seconds, 1) if k == 0 else 0.0,
                "rewards": round(t["rewards"] - t["start"], 1),
                "refl": round(t["refl"] - t["rewards"], 1),
                "expand": round(t["expand"] - t["refl"], 1),
            },
        }
        (it_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
        all_metrics.append(metrics)
        previous = info.path
        refl_checkpoints.append(Path(info.path))
        reward_checkpoints.append({c: Path(i.path) for c, i in rewards.items()})
    final = root / f"iter_{config.iterations}"
    final.mkdir(exist_ok=True)
    data.save(final / "pairs.jsonl")
    (root / "summary.json").write_text(
        json.dumps(
            {
                "refl_checkpoints": [str(p) for p in refl_checkpoints],
                "reward_checkpoints": [{c: str(p) for c, p in r.items()} for r in reward_checkpoints],
                "datasets": [m["dataset_before"] for m in all_metrics] + [data.counts()],
                "validation_prompts": validation,
            },
            indent=1,
        )
    )
    return LoopResult(root, refl_checkpoints, reward_checkpoints, all_metrics)


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
    parser.add_argument("--guard-every", type=int)
    parser.add_argument("--pretrain-images", type=int)
    parser.add_argument("--samples-per-prompt", type=int)
    parser.add_argument("--sample-prompts", type=int)
    parser.add_argument(
        "--base-in-gallery", action="store_true", default=None, help="D_0 also ranks p_0's own samples"
    )
    parser.add_argument("--base-samples", type=int, help="p_0 samples per D_0 group (--base-in-gallery)")
    parser.add_argument(
        "--expert-pushback",
        action="store_true",
        default=None,
        help="the panel re-ranks each expanded group after the provisional reward-score insertion",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared box)")
    return parser


def config_from_args(args: argparse.Namespace) -> LoopConfig:
    data: dict[str, Any] = json.loads(Path(args.config).read_text()) if args.config else {}
    data["output_dir"] = args.out
    for name in (
        "iterations",
        "base_model_path",
        "prompts_per_category",
        "gallery_seeds",
        "val_prompts_per_subcategory",
        "reward_hidden",
        "reward_layers",
        "reward_epochs",
        "pretrain_images",
        "samples_per_prompt",
        "sample_prompts",
        "base_in_gallery",
        "base_samples",
        "expert_pushback",
        "seed",
    ):
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    config = config_from_dict(LoopConfig, data)
    refl = config.refl
    changes: dict[str, Any] = {}
    if args.refl_steps is not None:
        changes["max_steps"] = args.refl_steps
    if args.refl_lr is not None:
        changes["learning_rate"] = args.refl_lr
    if args.sampling_steps is not None:
        changes["num_inference_steps"] = args.sampling_steps
        changes["late_steps"] = min(refl.late_steps, args.sampling_steps)
    if args.guard_every is not None:
        changes["guard"] = dataclasses.replace(refl.guard, every=args.guard_every)
    return dataclasses.replace(config, refl=dataclasses.replace(refl, **changes)) if changes else config


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
    "LoopConfig",
    "LoopResult",
    "RankedData",
    "RankedPrompt",
    "conservative_refl",
    "expand",
    "expert_ranking",
    "finetune",
    "hash_rank",
    "load_policy",
    "loop_prompts",
    "main",
    "print_progress",
    "rank_gallery",
    "reward_model_config",
    "run_loop",
    "train_rewards",
    "world_pretrain_data",
]
