"""Algorithm 1's steps: what the app's Celery stages and ``training.ml.loop.run_loop`` both call.

Each step takes plain inputs (the round configuration, pair records, paths, prompts) and returns plain
outputs (checkpoint infos, images, orderings). Where the inputs come from — PostgreSQL and object storage
for the app, a folder of PNGs and the simulated expert panel for the loop — is the caller's business;
what is trained and how is decided here, once:

- ``reward_train_config`` / ``refl_config``: the round configuration → the ML cores' configs;
- ``train_reward``: one category's reward model on D_k's pairs;
- ``finetune``: p_k → p_{k+1} by multi-reward ReFL (pretraining loss, hacking guard), or by reward-ranked
  fine-tuning (``reward_ranked_samples``: the denoising loss on the reward models' best of N samples);
- ``dpo_pairs`` / ``finetune_dpo``: p_k → p_{k+1} by Diffusion-DPO on the experts' pairs (the round's
  ``objective``), against p_k as the frozen reference;
- ``load_policy``: p_k = the base model with every earlier iteration's checkpoint applied in order
  (LoRA adapters merged into the UNet after each, so LoRA and full fine-tuning chain the same way);
- ``sample_groups``: new samples of p_{k+1} on noise fixed by (seed, prompt id, sample index, iteration);
- ``reward_scores`` / ``insert_samples``: the provisional placement of new samples by reward score;
- ``choose_prompts`` / ``push_back_prompts``: deterministic prompt choices (hash order, not list order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankmath.pairs import insert_by_score
from training.ml.algorithm1.config import RoundConfig
from training.ml.algorithm1.gate import GateClosed, PairAccuracy, gate_reason, pair_accuracy, split_own_pairs
from training.ml.common import CheckpointError, CheckpointInfo, ProgressCallback, report_progress
from training.ml.distributed import is_main_process
from training.ml.dpo.config import DPOConfig
from training.ml.dpo.trainer import CHECKPOINT_KIND as DPO_CHECKPOINT_KIND
from training.ml.dpo.trainer import DPOTrainer
from training.ml.refl.adapters import DiffusionAdapter
from training.ml.refl.best_of_n import best_of_n
from training.ml.refl.config import GuardConfig, LoRASettings, ReFLConfig
from training.ml.refl.sampler import eval_mode, initial_noise, sample
from training.ml.refl.stage import (
    ADAPTER_LOADERS,
    ReFLStageConfig,
    ReFLStageData,
    RewardSource,
    apply_refl_checkpoint,
    finetune_refl,
    load_reward_fns,
)
from training.ml.refl.trainer import PretrainData, RewardFn, RewardSpec
from training.ml.reward.checkpoint import load_reward_model, read_reward_meta, save_reward_model
from training.ml.reward.config import RewardModelConfig, RewardTrainConfig, TextSpec, VisionSpec
from training.ml.reward.data import ImageLoader, PairRecord
from training.ml.reward.model import RewardModel
from training.ml.reward.train import RewardData, train_reward_model

# ------------------------------------------------------------------------------------ configs


def base_model_location(config: RoundConfig, world_base_path: str) -> tuple[str, str]:
    """(family, local folder) of the round's base model: the synthetic world or a diffusers folder."""
    if config.is_synthetic:
        return "world", world_base_path
    path = Path(config.base_model)
    model_index = path / "model_index.json"
    if not model_index.is_file():
        raise ValueError(f"{path} is not a local diffusers folder (no model_index.json)")
    pipeline = json.loads(model_index.read_text()).get("_class_name", "")
    return ("sdxl" if "XL" in pipeline else "sd15"), str(path)


def reward_model_config(
    config: RoundConfig, category: str, pretrained_path: str | None = None
) -> RewardModelConfig:
    """The pretrained BLIP the round asks for (the worker's folder, or the synthetic world's committed
    encoder), or the from-scratch BLIP of the config."""
    reward = config.reward
    if config.is_synthetic:
        if reward.backbone == "scratch":
            pretrained_path = None
        elif not pretrained_path:
            from training.ml.world.encoder import ENCODER_DIR

            pretrained_path = str(ENCODER_DIR)
    if pretrained_path:
        return RewardModelConfig(
            category=category,  # type: ignore[arg-type]
            pretrained_path=pretrained_path,
            freeze_fraction=reward.freeze_fraction,
            head_init="itm" if reward.head == "itm" else "imagereward",
        )
    if reward.head == "itm":
        raise ValueError("the 'itm' reward head needs a pretrained BLIP folder; none was given")
    # Init std and GELU head as in bench/reward_world.py: what lets a from-scratch BLIP learn on CPU.
    sizes = dict(
        hidden_size=reward.hidden_size,
        intermediate_size=4 * reward.hidden_size,
        num_hidden_layers=reward.layers,
        num_attention_heads=reward.hidden_size // 32,
        initializer_range=0.05,
    )
    return RewardModelConfig.small(
        category,  # type: ignore[arg-type]
        vision=VisionSpec(**sizes, image_size=reward.image_size, patch_size=reward.patch_size),
        text=TextSpec(**sizes),
        head_activation="gelu",
        head_init="pytorch",
        head_dropout=(0.0,) * 4,
        freeze_fraction=0.0,
    )


def reward_train_config(
    config: RoundConfig,
    category: str,
    output_dir: str | Path,
    iteration: int,
    pretrained_path: str | None = None,
) -> RewardTrainConfig:
    reward = config.reward
    return RewardTrainConfig(
        model=reward_model_config(config, category, pretrained_path),
        output_dir=str(output_dir),
        epochs=reward.epochs,
        lr=reward.learning_rate,
        batch_groups=reward.batch_prompts,
        # Prompts with a pinned split keep it; the rest: validation chooses the epoch, no test split.
        split_fractions=(1.0 - reward.validation_share, reward.validation_share, 0.0),
        cpu=not torch.cuda.is_available(),
        seed=config.seed + iteration,
    )


def refl_config(config: RoundConfig, iteration: int, guard: bool) -> ReFLConfig:
    """ReFL for p_k → p_{k+1}; ``guard`` says whether a held-out evaluator is available."""
    fb = config.feedback
    return ReFLConfig(
        num_inference_steps=fb.sampling_steps,
        late_steps=fb.late_steps,
        guidance_scale=fb.guidance_scale,
        batch_size=fb.batch_size,
        max_steps=fb.steps,
        learning_rate=fb.learning_rate,
        weight_decay=fb.weight_decay,
        # Reward-ranked fine-tuning trains on the denoising loss alone: its data carry the rewards' choice.
        reward_scale=0.0 if config.objective == "raft" else fb.reward_scale,
        pretrain_loss_weight=1.0 if config.objective == "raft" else fb.pretrain_loss_weight,
        caption_dropout=config.raft.caption_dropout if config.objective == "raft" else 0.0,
        pretrain_noise_floor=config.raft.noise_floor if config.objective == "raft" else 0.0,
        train_mode="lora" if fb.lora else "full",
        lora=LoRASettings(rank=fb.lora_rank),
        ema_decay=fb.ema_decay,
        lr_warmup_steps=fb.warmup_steps,
        seed=config.seed + iteration,
        guard=GuardConfig(
            every=fb.guard_every if guard else 0,
            patience=fb.guard_patience,
            restore_best_at_end=True,
            rule=fb.guard_rule,  # type: ignore[arg-type]
            seeds=fb.guard_seeds,
        ),
    )


# ------------------------------------------------------------------------------------ prompts


def hash_rank(items: Sequence[str], salt: str) -> list[str]:
    # Order-independent deterministic choice: the sets never depend on how the caller listed the items.
    return sorted(items, key=lambda p: hashlib.sha256(f"{salt}:{p}".encode()).hexdigest())


def choose_prompts(by_category: Mapping[str, Sequence[str]], per_category: int, salt: str) -> list[str]:
    """Up to ``per_category`` prompts of each category (categories in sorted order), hash-chosen."""
    chosen: list[str] = []
    for category in sorted(by_category):
        chosen += hash_rank(sorted(set(by_category[category])), salt)[:per_category]
    return chosen


def refl_prompts(
    config: RoundConfig, train: Mapping[str, Sequence[str]], validation: Mapping[str, Sequence[str]]
) -> tuple[list[str], list[str]]:
    """(training prompts, guard validation prompts) for ReFL from per-category candidate pools."""
    fb = config.feedback
    prompts = choose_prompts(train, fb.prompts_per_category, f"refl-{config.seed}")
    held = choose_prompts(validation, fb.validation_prompts_per_category, f"refl-val-{config.seed}")
    return prompts, held


def prompt_categories(*pools: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """prompt text → category from per-category pools (a text in two categories keeps the first, sorted)."""
    out: dict[str, str] = {}
    for pool in pools:
        for category in sorted(pool):
            for prompt in pool[category]:
                out.setdefault(prompt, category)
    return out


def routed_reward(models: Mapping[str, RewardFn], categories: Mapping[str, str]) -> RewardFn:
    """One differentiable reward that scores each image with its prompt's category model only."""

    def score(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        missing = sorted({p for p in prompts if categories.get(p) not in models})
        if missing:
            raise ValueError(f"no reward model for the category of {missing[:3]}")
        out = torch.zeros(len(prompts), device=images.device)
        for category, fn in models.items():
            index = [i for i, p in enumerate(prompts) if categories[p] == category]
            if index:
                where = torch.tensor(index, device=images.device)
                values = fn([prompts[i] for i in index], images[where]).float()
                out = out.index_put((where,), values)
        return out

    return score


def expansion_prompts(
    config: RoundConfig, by_category: Mapping[str, Sequence[int]], iteration: int
) -> list[int]:
    """Prompt ids whose rankings p_{k+1}'s samples join (up to push_back.prompts_per_category each)."""
    chosen: list[int] = []
    for category in sorted(by_category):
        ids = [str(i) for i in sorted(set(by_category[category]))]
        ranked = hash_rank(ids, f"sample-{config.seed}-{iteration}")
        chosen += [int(i) for i in ranked[: config.push_back.prompts_per_category]]
    return sorted(chosen)


def push_back_prompts(config: RoundConfig, prompt_ids: Sequence[int], iteration: int) -> set[int]:
    """The share of expanded prompts whose groups go back to the experts for a ranking."""
    ids = [str(i) for i in sorted(set(prompt_ids))]
    count = round(config.push_back.share_of_prompts * len(ids))
    return {int(i) for i in hash_rank(ids, f"pushback-{config.seed}-{iteration}")[:count]}


# ------------------------------------------------------------------------------------ policies


def load_policy(family: str, base_path: str, chain: Sequence[str | Path] = ()) -> DiffusionAdapter:
    """p_k: the base model with the ReFL checkpoints of iterations 0..k-1 applied in order."""
    if family not in ADAPTER_LOADERS:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(ADAPTER_LOADERS)}")
    adapter = ADAPTER_LOADERS[family](base_path)
    for checkpoint in chain:
        apply_refl_checkpoint(adapter, checkpoint)
        merge_lora(adapter)
    return adapter


def merge_lora(adapter: DiffusionAdapter) -> None:
    """Fold LoRA weights into the UNet so the next iteration trains a fresh adapter on top."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    unet = adapter.unet
    if not any(isinstance(m, BaseTunerLayer) for m in unet.modules()):
        return
    # fuse_lora folds W + scale·BA into the base weights; unload_lora then swaps every LoRA-wrapped module
    # back for its (now fused) base layer and forgets the adapter config, leaving a plain UNet.
    unet.fuse_lora()
    unet.unload_lora()


# ------------------------------------------------------------------------------------ steps


def train_reward(
    config: RoundConfig,
    category: str,
    records: Sequence[PairRecord],
    image_loader: ImageLoader,
    output_dir: str | Path,
    iteration: int,
    pretrained_path: str | None = None,
    progress: ProgressCallback | None = None,
    own_images: set[int] | None = None,
    previous: str | Path | None = None,
) -> CheckpointInfo:
    """R_k for one category, trained on D_k's pairs of that category.

    ``own_images``: ids of the current model's (p_k's) images. Pairs of two of them on a share of their
    prompts are held out of training and measure the gate: the metrics gain ``own_accuracy``,
    ``own_accuracy_ci_low``/``_high``, ``own_pairs`` and ``own_prompts`` (None / 0 when there are none).

    ``previous``: R_{k-1}'s checkpoint of this category. On the same held-out pairs it gives
    ``fresh_accuracy`` (+ interval), the previous reward model on the fresh samples of the model that was
    fine-tuned on it, beside ``previous_own_accuracy``, what it scored on p_{k-1}'s samples; the gate
    stops the loop when the first is significantly lower.
    """
    mine = [r for r in records if r.category == category]
    train, gate = split_own_pairs(
        mine, own_images or set(), config.reward.gate_share, f"gate-{config.seed}-{iteration}"
    )
    info = train_reward_model(
        reward_train_config(config, category, output_dir, iteration, pretrained_path),
        RewardData(records=train, image_loader=image_loader),
        progress,
    )
    if not is_main_process():
        return info  # the main process finishes (and rewrites) the one checkpoint
    # Measured before the re-normalisation (a monotone map: the same accuracy), so that the checkpoint
    # it rewrites carries the figure the next iteration's drop check reads back.
    accuracy = own_sample_accuracy(info.path, gate, image_loader, seed=config.seed + iteration)
    normalization = normalize_on_own_samples(
        info.path, mine, own_images or set(), image_loader, metrics=accuracy.as_metrics()
    )
    metrics = {**info.metrics, **accuracy.as_metrics(), **normalization}
    if previous is not None and gate:
        fresh = own_sample_accuracy(previous, gate, image_loader, seed=config.seed + iteration)
        before = read_reward_meta(previous)["metadata"].get("metrics") or {}
        metrics.update(fresh.as_metrics("fresh_"))
        metrics.update({f"previous_{k}": before.get(k) for k in accuracy.as_metrics()})
    return dataclasses.replace(info, metrics=metrics)


@torch.no_grad()
def normalize_on_own_samples(
    checkpoint: str | Path,
    records: Sequence[PairRecord],
    own_images: set[int],
    image_loader: ImageLoader,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Re-centre a reward checkpoint's scores on the current model's own samples (mean 0, std 1 there).

    ReFL and best-of-N see only the current model's images; a normalisation fitted on the gallery leaves
    them at an arbitrary offset and scale, which changes the reward's weight against the pretraining loss
    and between categories. A monotone map: pair accuracies are unchanged. No own samples: kept as trained.
    ``metrics`` join those the rewritten checkpoint records.
    """
    found: dict[int, tuple[str, str, str]] = {}
    for r in records:
        for image_id, path, sha in (
            (r.winner_id, r.winner_path, r.winner_sha256),
            (r.loser_id, r.loser_path, r.loser_sha256),
        ):
            if image_id in own_images:
                found[image_id] = (r.prompt, path, sha)
    if len(found) < 2:
        return {"normalization_source": "training images"}
    model = load_reward_model(checkpoint).eval()
    raw = []
    for prompt, path, sha in found.values():
        image = model.resize_for_model(image_loader(path, sha).unsqueeze(0).float())
        raw.append(float(model.raw_score([prompt], image)[0]))
    std = float(np.std(raw, ddof=1))
    if not std > 0:
        return {"normalization_source": "training images"}
    model.set_normalization(float(np.mean(raw)), std)
    meta = read_reward_meta(checkpoint)["metadata"]
    keep = {"train_config": meta["train_config"]} if "train_config" in meta else None
    recorded = {**(meta.get("metrics") or {}), **(metrics or {})}
    save_reward_model(model, checkpoint, metrics=recorded, dataset=meta.get("dataset"), extra=keep)
    return {"normalization_source": "own samples", "normalization_images": len(found)}


def pair_images(records: Sequence[PairRecord]) -> dict[int, tuple[str, dict[int, tuple[str, str]]]]:
    """prompt_id → (prompt, image id → (path, sha256)) of every image the pairs name."""
    images: dict[int, tuple[str, dict[int, tuple[str, str]]]] = {}
    for r in records:
        _, group = images.setdefault(r.prompt_id, (r.prompt, {}))
        group[r.winner_id] = (r.winner_path, r.winner_sha256)
        group[r.loser_id] = (r.loser_path, r.loser_sha256)
    return images


@torch.no_grad()
def pair_scores(
    checkpoint: str | Path, records: Sequence[PairRecord], image_loader: ImageLoader
) -> dict[int, float]:
    """A reward checkpoint's score of every image the pairs name (image id → score), one batch per prompt."""
    if not records:
        return {}
    model = load_reward_model(checkpoint).eval()
    scores: dict[int, float] = {}
    for prompt, group in pair_images(records).values():
        ids = sorted(group)
        values = reward_scores(model, prompt, [image_loader(*group[i]) for i in ids])
        scores.update(zip(ids, values, strict=True))
    return scores


def own_sample_accuracy(
    checkpoint: str | Path, records: Sequence[PairRecord], image_loader: ImageLoader, seed: int = 0
) -> PairAccuracy:
    """A reward checkpoint's pair accuracy (95 % interval) on expert-ranked pairs of one model's samples."""
    return pair_accuracy(records, pair_scores(checkpoint, records, image_loader), seed=seed)


def check_gate(config: RoundConfig, reward_metrics: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise :class:`GateClosed` (with the reason) when ReFL must not start on these reward models."""
    reason = gate_reason(config.feedback.gate, reward_metrics)
    if reason is not None:
        raise GateClosed(reason)


def world_pretrain_data(n: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    """Correct renders of the world's pretraining-split prompts (its base model's own distribution)."""
    from training.ml.world.pretrain import draw_batch, training_prompts

    images, captions = draw_batch(np.random.default_rng(seed), n, training_prompts(), uncond_prob=0.0)
    return list(zip(captions, images, strict=True))


def pretrain_data(
    config: RoundConfig,
    family: str,
    iteration: int,
    preferred: Callable[[int], PretrainData] | None = None,
) -> PretrainData | None:
    """The pretraining loss's (prompt, image) pairs: world renders, or the experts' preferred images.

    ``preferred(n)`` returns up to n (prompt, image) pairs the experts ranked first (the app reads them
    from PostgreSQL); a diffusers base has no other source of correct images here.
    """
    fb = config.feedback
    if fb.pretrain_loss_weight == 0 or config.objective == "raft":
        # Reward-ranked fine-tuning draws its denoising data from p_k itself (``reward_ranked_samples``).
        return None
    if family == "world":
        return world_pretrain_data(fb.pretrain_images, config.seed + iteration)
    if preferred is None:
        raise ValueError("a pretraining loss on a diffusers base needs the experts' preferred images")
    data = preferred(fb.pretrain_images)
    if not data:
        raise ValueError("a pretraining loss needs images ranked first by the experts; there are none")
    return data


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    checkpoint: CheckpointInfo
    curve: list[dict[str, float]]  # per step: train reward; at guard steps val reward and held-out score


def finetune(
    config: RoundConfig,
    *,
    family: str,
    base_path: str,
    chain: Sequence[str | Path],
    rewards: Mapping[str, str | Path],
    prompts: Sequence[str],
    validation_prompts: Sequence[str],
    output_dir: str | Path,
    iteration: int,
    categories: Mapping[str, str] | None = None,
    pretrain: PretrainData | None = None,
    heldout: RewardFn | None = None,
    progress: ProgressCallback | None = None,
    reward_metrics: Mapping[str, Mapping[str, Any]] | None = None,
    ranked: RewardRankedSamples | None = None,
) -> FinetuneResult:
    """p_k → p_{k+1}: multi-reward ReFL from p_k (base + ``chain``) on the reward checkpoints given, or with
    objective ``raft`` the denoising loss on the reward models' best of N samples of p_k (drawn here, or
    ``ranked``: the same call's draws made earlier, as a sweep over fine-tuning settings reuses them).

    ``reward_metrics`` (category → the reward checkpoint's metrics) feed the gate; :class:`GateClosed`
    is raised, before any training, when it is closed.

    ``categories`` (prompt → category) routes each image to its category's reward model when the round
    says so (``feedback.route_rewards``); it must cover the training and validation prompts.
    """
    if not rewards:
        raise ValueError("no reward models to fine-tune on")
    # Before anything expensive: the reward models must be able to judge this model's own samples.
    check_gate(config, reward_metrics or {name: {} for name in rewards})
    sources = tuple(RewardSource(name, str(path), 1.0) for name, path in sorted(rewards.items()))
    reward_fns = None
    if config.feedback.route_rewards:
        if categories is None:
            raise ValueError("routing rewards by category needs each prompt's category")
        loaded = load_reward_fns(sources)
        reward_fns = {"routed": RewardSpec(routed_reward({n: r.fn for n, r in loaded.items()}, categories))}
    if ranked is not None and config.objective != "raft":
        raise ValueError("reward-ranked samples train only a round whose objective is 'raft'")
    adapter = load_policy(family, base_path, chain)
    if config.objective == "raft" and ranked is None:
        ranked = reward_ranked_samples(
            config,
            adapter,
            reward_fns if reward_fns is not None else load_reward_fns(sources),
            prompts,
            iteration,
            progress=progress,
        )
    if ranked is not None:
        pretrain = ranked.samples
    curve: list[dict[str, float]] = []

    def record(step: int, total: int, metrics: Mapping[str, float]) -> bool | None:
        keep = {k: float(v) for k, v in metrics.items() if k == "reward" or k.startswith("val/")}
        curve.append({"step": step, **keep})
        return progress(step, total, metrics) if progress is not None else None

    info = finetune_refl(
        ReFLStageConfig(
            refl=refl_config(config, iteration, guard=heldout is not None),
            output_dir=str(output_dir),
            family=family,
            base_model_path=base_path,
            rewards=sources,
        ),
        ReFLStageData(
            prompts=list(prompts),
            validation_prompts=list(validation_prompts) or list(prompts)[:8],
            pretrain_data=pretrain,
            adapter=adapter,
            reward_fns=reward_fns,
            heldout=heldout,
        ),
        record,
    )
    if ranked is not None:
        info = dataclasses.replace(info, metrics={**info.metrics, **ranked.metrics(config)})
    return FinetuneResult(info, curve)


RAFT_NOISE_STREAM = 7_000_003


@dataclasses.dataclass(frozen=True)
class RewardRankedSamples:
    samples: list[tuple[str, torch.Tensor]]  # (prompt, the chosen image [3, H, W] in [0, 1])
    chosen_reward: float  # mean reward of the chosen samples
    candidate_reward: float  # mean reward of every candidate: the difference is what the choice bought

    def metrics(self, config: RoundConfig) -> dict[str, float | int | str]:
        return {
            "objective": "raft",
            "candidates": config.raft.candidates,
            "candidate_guidance": candidate_guidance(config),
            "ranked_samples": len(self.samples),
            "chosen_reward": self.chosen_reward,
            "candidate_reward": self.candidate_reward,
        }


@torch.no_grad()
def reward_ranked_samples(
    config: RoundConfig,
    policy: DiffusionAdapter,
    rewards: Mapping[str, RewardSpec],
    prompts: Sequence[str],
    iteration: int,
    progress: ProgressCallback | None = None,
    batch_size: int = 16,
) -> RewardRankedSamples:
    """Reward-ranked fine-tuning's data: for each prompt, the best of ``raft.candidates`` samples of p_k
    (at ``candidate_guidance``, the round's sampling steps) by the summed reward functions (one routed reward when the
    round routes by category). The noise is fixed by (seed, iteration), so every process of a
    multi-process run draws the same data."""
    if not prompts:
        raise ValueError("reward-ranked fine-tuning needs training prompts")
    fb = config.feedback
    n = config.raft.candidates
    height, width = policy.default_size
    generator = torch.Generator().manual_seed(config.seed * RAFT_NOISE_STREAM + iteration)
    if torch.cuda.is_available():
        # Sample where the model will train (this process's GPU under a multi-process launch); the reward
        # models score on the CPU they were loaded on. Initial noise is drawn on the CPU either way.
        policy.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))))
    fns = {name: _scored_on_cpu(spec.score) for name, spec in rewards.items()}
    weights = {name: spec.weight for name, spec in rewards.items()}
    per_chunk = max(1, batch_size // n)
    data: list[tuple[str, torch.Tensor]] = []
    chosen_scores: list[torch.Tensor] = []
    all_scores: list[torch.Tensor] = []
    with eval_mode(policy.unet):
        for start in range(0, len(prompts), per_chunk):
            chunk = list(prompts[start : start + per_chunk])
            chosen = best_of_n(
                policy,
                chunk,
                n,
                fns,
                weights,
                num_inference_steps=fb.sampling_steps,
                guidance_scale=candidate_guidance(config),
                height=height,
                width=width,
                generator=generator,
                batch_size=batch_size,
            )
            data += [(p, image.detach().float().cpu()) for p, image in zip(chunk, chosen.images, strict=True)]
            chosen_scores.append(chosen.scores.max(dim=1).values.cpu())
            all_scores.append(chosen.scores.flatten().cpu())
            # Sampling is most of the stage's time: report it (the worker's heartbeat rides on it). A stop
            # request ends sampling here; the trainer then sees it at its first step and stops there too.
            if not report_progress(progress, len(data), len(prompts), {"ranked_prompts": float(len(data))}):
                break
    return RewardRankedSamples(
        data, float(torch.cat(chosen_scores).mean()), float(torch.cat(all_scores).mean())
    )


def candidate_guidance(config: RoundConfig) -> float:
    """Guidance scale of RAFT's candidates: the objective's own, else the round's sampling guidance."""
    own = config.raft.guidance_scale
    return config.feedback.guidance_scale if own is None else own


def _scored_on_cpu(fn: RewardFn) -> RewardFn:
    def score(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        return fn(prompts, images.float().cpu())

    return score


def sample_seeds(config: RoundConfig, prompt_id: int, count: int, iteration: int) -> list[int]:
    """Noise seeds of p_{k+1}'s samples; iteration -1 gives p_0's (the base model's) samples."""
    return [config.seed * 1_000_003 + prompt_id * 10 + j + 100 * (iteration + 1) for j in range(count)]


@torch.no_grad()
def sample_groups(
    config: RoundConfig,
    policy: DiffusionAdapter,
    groups: Sequence[tuple[int, str]],
    per_group: int,
    iteration: int,
    batch_images: int = 16,
) -> Iterator[tuple[int, list[list[torch.Tensor]]]]:
    """Sample ``per_group`` images for each (prompt id, prompt); yields (groups done, their images)."""
    fb = config.feedback
    height, width = policy.default_size
    per_chunk = max(1, batch_images // per_group)  # batch 1 costs ~2x more per image on CPU
    for start in range(0, len(groups), per_chunk):
        chunk = groups[start : start + per_chunk]
        prompts = [prompt for _, prompt in chunk for _ in range(per_group)]
        seeds = [s for pid, _ in chunk for s in sample_seeds(config, pid, per_group, iteration)]
        latents = torch.cat(
            [initial_noise(policy, 1, height, width, torch.Generator().manual_seed(s)) for s in seeds]
        )
        images = sample(
            policy,
            prompts,
            num_inference_steps=fb.sampling_steps,
            guidance_scale=fb.guidance_scale,
            latents=latents,
        )
        yield (
            start + len(chunk),
            [list(images[i * per_group : (i + 1) * per_group]) for i in range(len(chunk))],
        )


@torch.no_grad()
def reward_scores(model: RewardModel, prompt: str, images: Sequence[torch.Tensor]) -> list[float]:
    """One reward model's scores of a prompt's images (``[3, H, W]``, any sizes: a gallery's models draw
    at their own), each resized to the model's input."""
    return model.score_images([prompt] * len(images), list(images)).tolist()


def insert_samples(
    ordering: Sequence[Sequence[int]], scores: Mapping[int, float], new_ids: Sequence[int]
) -> list[list[int]]:
    """The provisional ranking: new samples slotted into the human order by reward score."""
    ranked = [i for group in ordering for i in group]
    return insert_by_score(ordering, {i: scores[i] for i in ranked}, {i: scores[i] for i in new_ids})


def checkpoint_config(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "checkpoint.json").read_text()).get("config", {})


# ------------------------------------------------------------------------------------ Diffusion-DPO


def dpo_config(config: RoundConfig, iteration: int) -> DPOConfig:
    """Diffusion-DPO for p_k → p_{k+1}: the round's DPO settings (β, ties, pair weights) with its
    fine-tuning budget (steps, batch of pairs, learning rate, weight decay, LoRA)."""
    fb, dpo = config.feedback, config.dpo
    return DPOConfig(
        beta=dpo.beta,
        batch_size=fb.batch_size,
        max_steps=fb.steps,
        learning_rate=fb.learning_rate,
        weight_decay=fb.weight_decay,
        ties=dpo.ties,  # type: ignore[arg-type]
        tie_weight=dpo.tie_weight,
        use_pair_weights=dpo.pair_weights,
        train_mode="lora" if fb.lora else "full",
        lora=LoRASettings(rank=fb.lora_rank),
        lr_warmup_steps=fb.warmup_steps,
        seed=config.seed + iteration,
    )


class NoDPOPairs(ValueError):
    """The round's pair source holds no pair Diffusion-DPO could train on."""


def dpo_pairs(
    config: RoundConfig, records: Sequence[PairRecord], own_images: set[int], iteration: int
) -> tuple[list[PairRecord], list[PairRecord]]:
    """(training pairs, held-out pairs) of D_k for Diffusion-DPO, chosen by ``dpo.pair_source``.

    Only expert-ranked (human-source) pairs: model-source pairs are a reward model's provisional
    placement of new samples, and DPO exists to learn without one. ``own`` keeps the pairs with at least
    one of p_k's samples (``own_images``): a push-back task holds at most two new samples among the
    gallery's images, so requiring both would leave at most one pair per prompt. ``gallery`` keeps the
    others, ``both`` all.

    Held out (for the implicit reward accuracy, never trained on): pairs of val-split prompts, and of a
    hash-chosen ``dpo.heldout_share`` of the prompts without a split (the loop's; chosen by prompt text,
    so one text's groups stay together); test-split prompts are left out entirely (a benchmark's).
    """
    source = config.dpo.pair_source
    chosen = []
    for r in records:
        if r.source != "human" or r.split == "test":
            continue
        touches_own = r.winner_id in own_images or r.loser_id in own_images
        if source == "both" or (source == "own") == touches_own:
            chosen.append(r)
    unsplit = sorted({r.prompt for r in chosen if r.split is None})
    # At least one prompt stays for training whatever the share.
    count = min(round(config.dpo.heldout_share * len(unsplit)), max(0, len(unsplit) - 1))
    held = set(hash_rank(unsplit, f"dpo-heldout-{config.seed}-{iteration}")[:count])
    train = [r for r in chosen if r.split != "val" and r.prompt not in held]
    heldout = [r for r in chosen if r.split == "val" or r.prompt in held]
    if not any(r.label == 1.0 or config.dpo.ties == "down_weight" for r in train):
        raise NoDPOPairs(
            f"no expert-ranked pairs to train Diffusion-DPO on (pair source {source!r}: "
            f"{len(chosen)} pairs, {len(heldout)} of them held out)"
            + ("; 'own' needs push-back rankings of the current model's samples" if source == "own" else "")
        )
    return train, heldout


def finetune_dpo(
    config: RoundConfig,
    *,
    family: str,
    base_path: str,
    chain: Sequence[str | Path],
    pairs: Sequence[PairRecord],
    loader: ImageLoader,
    output_dir: str | Path,
    iteration: int,
    heldout_pairs: Sequence[PairRecord] = (),
    dpo: DPOConfig | None = None,
    eval_every: int | None = None,
    progress: ProgressCallback | None = None,
    resume: bool = True,
) -> FinetuneResult:
    """p_k → p_{k+1} by Diffusion-DPO on ``pairs`` from p_k (base + ``chain``), against p_k as reference.

    No reward model and no gate: the pairs are the training signal. ``heldout_pairs`` (decided pairs
    not trained on) give the implicit reward accuracy at step 0, every ``eval_every`` steps (default:
    the round's held-out evaluation interval, ``feedback.guard_every``; 0: only at the ends) and at the
    end; the curve holds the DPO loss and batch accuracy per step. The checkpoint chains through
    ``load_policy`` like a ReFL one. With ``resume``, a run that an earlier attempt left in
    ``output_dir/last`` (a cancelled or lost stage) continues from there.
    """
    settings = dpo if dpo is not None else dpo_config(config, iteration)
    if eval_every is None:
        eval_every = config.feedback.guard_every
    output_dir = Path(output_dir)
    trainer = DPOTrainer(
        load_policy(family, base_path, chain), settings, pairs, loader, output_dir=output_dir
    )
    heldout = [p for p in heldout_pairs if p.label == 1.0]
    if resume and (output_dir / "last").is_dir():
        # A previous attempt on other pairs (more were ranked since) is refused: this run starts afresh.
        with contextlib.suppress(CheckpointError):
            trainer.load(output_dir / "last")
    curve: list[dict[str, float]] = []

    def held_out() -> dict[str, float]:
        scores = trainer.evaluate_pairs(heldout, seed=config.seed)
        return {f"val/{k}": v for k, v in scores.items()}

    # Held-out evaluations, like progress reports, happen on the main process only.
    if heldout and trainer.accelerator.is_main_process:
        curve.append({"step": trainer.step, **held_out()})  # 0, or where a resumed run continues

    def record(step: int, total: int, metrics: Mapping[str, float]) -> bool | None:
        keep = {k: float(metrics[k]) for k in ("loss", "implicit_acc") if k in metrics}
        if heldout and (step == total or (eval_every and step % eval_every == 0)):
            keep.update(held_out())
        curve.append({"step": step, **keep})
        return progress(step, total, {**metrics, **keep}) if progress is not None else None

    summary = trainer.train(record)
    if not trainer.accelerator.is_main_process:
        assert summary.checkpoint is not None
        return FinetuneResult(CheckpointInfo(summary.checkpoint, DPO_CHECKPOINT_KIND, {}), [])
    if heldout and (
        not curve or curve[-1].get("step") != summary.steps or "val/implicit_acc" not in curve[-1]
    ):
        # A requested early stop skips the final evaluation in ``record``.
        curve.append({"step": summary.steps, **held_out()})
    assert summary.checkpoint is not None
    metrics = {
        "objective": "dpo",
        "steps": summary.steps,
        "stop_reason": summary.stop_reason,
        "pairs": len(trainer.pairs),
        "heldout_pairs": len(heldout),
        # Prompts held out, whether or not the panel decided any of their pairs (ties are not evaluated).
        "heldout_prompts": len({p.prompt for p in heldout_pairs}),
        "last": summary.last_metrics,
        "heldout": {k: v for k, v in curve[-1].items() if k.startswith("val/")} if heldout else {},
        # The final held-out implicit reward accuracy under a plain name (pages cannot read "val/...").
        "heldout_implicit_acc": curve[-1].get("val/implicit_acc") if heldout else None,
    }
    info = CheckpointInfo(
        path=summary.checkpoint,
        kind=DPO_CHECKPOINT_KIND,
        metrics=metrics,
        stopped_early=summary.stopped_early,
    )
    return FinetuneResult(info, curve)


__all__ = [
    "FinetuneResult",
    "base_model_location",
    "check_gate",
    "checkpoint_config",
    "own_sample_accuracy",
    "pair_images",
    "pair_scores",
    "choose_prompts",
    "expansion_prompts",
    "NoDPOPairs",
    "dpo_config",
    "dpo_pairs",
    "finetune",
    "finetune_dpo",
    "hash_rank",
    "insert_samples",
    "load_policy",
    "merge_lora",
    "pretrain_data",
    "prompt_categories",
    "routed_reward",
    "push_back_prompts",
    "refl_config",
    "refl_prompts",
    "reward_model_config",
    "reward_scores",
    "reward_train_config",
    "sample_groups",
    "sample_seeds",
    "train_reward",
    "world_pretrain_data",
]
