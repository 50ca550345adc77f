"""The worker side of a round: each stage reads rows and files, calls the Django-free ML core, and
registers what it produced (files first, rows after, so no row ever names a partial file).

Runs only on workers: torch and the ML core are imported inside the functions.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils.text import slugify

from annotation.models import ConsensusRanking, TaskStatus
from gallery.models import Category, Generator, GeneratorKind, Image, Prompt
from training.artifacts import artifact_fetch_dir, artifact_store_dir, file_fetch
from training.models import DiffusionCheckpoint, RewardModelCheckpoint, RoundStatus
from training.round_config import SYNTHETIC_BASE, RoundConfig
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

    Named by id and creation time: a database that was reset numbers its rounds from 1 again, and a new
    round must never resume an old round's run.
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


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def storage_image_loader() -> Callable[[str, str], Any]:
    """The reward trainer's image loader: storage name + sha256 → tensor, via the worker's file cache."""
    import numpy as np
    import torch
    from PIL import Image as PILImage

    def load(path: str, sha256: str):
        with PILImage.open(file_fetch(path, sha256)) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    return load


# --- stage 1: reward models --------------------------------------------------------------------------


def _write_training_pairs(category: Category, iteration: int, target: Path) -> int:
    from annotation.exporters.pairs import PAIR_LOOKUPS, jsonl_chunks
    from annotation.selectors_training import pairs_for_training

    rows = pairs_for_training(category_slug=category.slug, upto_iteration=iteration).order_by("id")
    count = 0
    with open(target, "wb") as handle:
        for chunk in jsonl_chunks(rows.values_list(*PAIR_LOOKUPS).iterator(chunk_size=2000)):
            handle.write(chunk)
            count += chunk.count(b"\n")
    return count


def reward_model_config(config: RoundConfig, category_slug: str):
    """A BLIP folder named in the settings for real runs; the small BLIP config for the synthetic world."""
    from training.ml.reward import RewardModelConfig, TextSpec, VisionSpec

    pretrained = settings.REWARD_BLIP_PATH or None
    if config.base_model == SYNTHETIC_BASE or pretrained is None:
        return RewardModelConfig(
            category=category_slug,
            vision=VisionSpec(
                image_size=32,
                patch_size=4,
                hidden_size=96,
                intermediate_size=384,
                num_hidden_layers=3,
                num_attention_heads=4,
            ),
            text=TextSpec(hidden_size=96, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4),
            freeze_fraction=0.0,
        )
    return RewardModelConfig(
        category=category_slug, pretrained_path=pretrained, freeze_fraction=config.reward.freeze_fraction
    )


def stage_train_rewards(context: StageContext) -> None:
    from training.ml.reward import (
        RewardData,
        RewardTrainConfig,
        dataset_fingerprint,
        read_pairs,
        train_reward_model,
    )

    config = _config(context)
    done = {}
    for category in _categories(context):
        existing = RewardModelCheckpoint.objects.filter(
            training_round=context.training_round, category=category, iteration=context.iteration
        ).first()
        if existing is not None:  # a resumed stage keeps what it already registered
            done[category.slug] = existing.pk
            continue
        pairs_path = _workdir(context, "pairs") / f"{category.slug}.jsonl"
        n_pairs = _write_training_pairs(category, context.iteration, pairs_path)
        if n_pairs == 0:
            round_log(
                round_id=context.training_round.pk, message=f"no pairs yet for {category.name}; skipped"
            )
            continue
        round_log(
            round_id=context.training_round.pk,
            message=f"training the {category.name} reward model on {n_pairs} pairs",
        )
        train_config = RewardTrainConfig(
            model=reward_model_config(config, category.slug),
            output_dir=str(_workdir(context, "reward") / category.slug),
            epochs=config.reward.epochs,
            lr=config.reward.learning_rate,
            batch_groups=config.reward.batch_prompts,
            cpu=_device() == "cpu",
            seed=config.seed + context.iteration,
        )
        records = read_pairs(pairs_path)
        info = train_reward_model(
            train_config,
            RewardData(records=records, image_loader=storage_image_loader()),
            progress=context.progress_callback(f"reward model · {category.name}"),
        )
        name, sha = artifact_store_dir(info.path, prefix="checkpoints/reward")
        checkpoint, _ = RewardModelCheckpoint.objects.update_or_create(
            training_round=context.training_round,
            category=category,
            iteration=context.iteration,
            defaults={
                "file": name,
                "sha256": sha,
                "config": json.loads((Path(info.path) / "checkpoint.json").read_text()).get("config", {}),
                "metrics": _jsonable(info.metrics),
                "dataset_hash": dataset_fingerprint(records)["sha256"],
                "code_version": code_version(),
            },
        )
        done[category.slug] = checkpoint.pk
        # Registered first: a cancel during training still leaves this checkpoint usable.
        context.beat(force=True)
    if not done:
        raise RuntimeError("no reward model could be trained: none of the round's categories has pairs")
    round_record_outputs(
        round_id=context.training_round.pk, iteration=context.iteration, reward_checkpoints=done
    )


# --- stage 2: feedback learning ----------------------------------------------------------------------


def _family_and_path(config: RoundConfig) -> tuple[str, str]:
    if config.base_model == SYNTHETIC_BASE:
        from training.ml.world.model import PRETRAINED_DIR

        return "world", settings.WORLD_BASE_MODEL_PATH or str(PRETRAINED_DIR)
    path = Path(config.base_model)
    model_index = path / "model_index.json"
    if not model_index.is_file():
        raise ValueError(f"{path} is not a local diffusers folder (no model_index.json)")
    pipeline = json.loads(model_index.read_text()).get("_class_name", "")
    return ("sdxl" if "XL" in pipeline else "sd15"), str(path)


def load_adapter_at(context: StageContext, config: RoundConfig, iteration: int):
    """The base model with every earlier iteration's fine-tuning of this round merged in."""
    from training.ml.refl.stage import ADAPTER_LOADERS, apply_refl_checkpoint

    family, path = _family_and_path(config)
    adapter = ADAPTER_LOADERS[family](path)
    earlier = DiffusionCheckpoint.objects.filter(
        training_round=context.training_round, iteration__lt=iteration
    )
    for checkpoint in earlier.order_by("iteration"):
        local = artifact_fetch_dir(checkpoint.file.name, checkpoint.sha256)
        apply_refl_checkpoint(adapter, local)
        _merge_lora(adapter)
    return adapter, family, path


def _merge_lora(adapter) -> None:
    """Fold LoRA weights into the UNet so the next iteration trains a fresh adapter on top."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    unet = adapter.unet
    tuned = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    if not tuned:
        return
    for module in tuned:
        module.merge()
    merged = {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}
    unet.delete_adapters(unet.active_adapters())
    unet.load_state_dict(merged)


def _prompts(context: StageContext, split: str, per_category: int, seed: int) -> list[Prompt]:
    chosen: list[Prompt] = []
    for category in _categories(context):
        ids = list(
            Prompt.objects.filter(category=category, split=split).order_by("id").values_list("id", flat=True)
        )
        random.Random(seed + category.pk).shuffle(ids)
        chosen.extend(Prompt.objects.filter(pk__in=ids[:per_category]).order_by("id"))
    return chosen


def stage_feedback_learning(context: StageContext) -> None:
    from training.ml.refl import GuardConfig, LoRASettings, ReFLConfig
    from training.ml.refl.stage import ReFLStageConfig, ReFLStageData, RewardSource, finetune_refl

    config = _config(context)
    existing = DiffusionCheckpoint.objects.filter(
        training_round=context.training_round, iteration=context.iteration
    )
    if existing.exists():
        return
    rewards = []
    for checkpoint in RewardModelCheckpoint.objects.filter(
        training_round=context.training_round, iteration=context.iteration
    ):
        local = artifact_fetch_dir(checkpoint.file.name, checkpoint.sha256)
        rewards.append(RewardSource(name=checkpoint.category.slug, path=str(local), weight=1.0))
    if not rewards:
        raise RuntimeError("no reward model checkpoints for this iteration")
    adapter, family, path = load_adapter_at(context, config, context.iteration)
    fb = config.feedback
    train_prompts = [
        p.text for p in _prompts(context, "train", config.push_back.prompts_per_category, config.seed)
    ]
    val_prompts = [p.text for p in _prompts(context, "val", 16, config.seed)]
    heldout = None
    if family == "world":
        from training.ml.refl.world_adapter import oracle_evaluator

        heldout = oracle_evaluator
    refl = ReFLConfig(
        num_inference_steps=fb.sampling_steps,
        late_steps=fb.late_steps,
        guidance_scale=fb.guidance_scale,
        max_steps=fb.steps,
        learning_rate=fb.learning_rate,
        reward_scale=fb.reward_scale,
        train_mode="lora" if fb.lora else "full",
        lora=LoRASettings(rank=fb.lora_rank),
        seed=config.seed + context.iteration,
        guard=GuardConfig(every=fb.guard_every if heldout is not None else 0),
    )
    info = finetune_refl(
        ReFLStageConfig(
            refl=refl,
            output_dir=str(_workdir(context, "refl")),
            family=family,
            base_model_path=path,
            rewards=tuple(rewards),
        ),
        ReFLStageData(
            prompts=train_prompts,
            validation_prompts=val_prompts or train_prompts[:8],
            adapter=adapter,
            heldout=heldout,
        ),
        progress=context.progress_callback("feedback learning"),
    )
    name, sha = artifact_store_dir(info.path, prefix="checkpoints/diffusion")
    base = context.training_round.base_generator
    base_name = base.name if base else ("World base" if family == "world" else Path(path).name)
    with transaction.atomic():
        generator, _ = Generator.objects.get_or_create(
            slug=slugify(f"{base_name}-round{context.training_round.pk}-it{context.iteration + 1}")[:80],
            defaults={
                "name": f"{base_name} · round {context.training_round.pk} · iteration {context.iteration + 1}",
                "kind": GeneratorKind.BASE,
                "base_iteration": context.iteration + 1,
                "joined_iteration": context.iteration + 1,
                "weights_uri": name,
                "description": f"ReFL fine-tuned from {base_name} in round {context.training_round.pk}.",
            },
        )
        checkpoint, _ = DiffusionCheckpoint.objects.update_or_create(
            training_round=context.training_round,
            iteration=context.iteration,
            defaults={
                "file": name,
                "sha256": sha,
                "config": json.loads((Path(info.path) / "checkpoint.json").read_text()).get("config", {}),
                "metrics": _jsonable(info.metrics),
                "generator": generator,
                "code_version": code_version(),
                "dataset_hash": ",".join(sorted(str(r.path)[-12:] for r in rewards)),
            },
        )
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
    with_consensus = ConsensusRanking.objects.filter(
        task__prompt__category__in=_categories(context), task__prompt__split="train"
    ).values_list("task__prompt_id", flat=True)
    ids = sorted(set(with_consensus))
    random.Random(config.seed + 7 * context.iteration).shuffle(ids)
    per_round = config.push_back.prompts_per_category * max(1, len(_categories(context)))
    return list(Prompt.objects.filter(pk__in=ids[:per_round]).order_by("id"))


def stage_sampling(context: StageContext) -> None:
    import torch

    from gallery.services.images import image_register
    from training.ml.refl.sampler import sample
    from training.ml.refl.stage import apply_refl_checkpoint

    config = _config(context)
    checkpoint = DiffusionCheckpoint.objects.get(
        training_round=context.training_round, iteration=context.iteration
    )
    adapter, family, _ = load_adapter_at(context, config, context.iteration)
    apply_refl_checkpoint(adapter, artifact_fetch_dir(checkpoint.file.name, checkpoint.sha256))
    prompts = _sampling_prompts(context, config)
    per_prompt = config.push_back.samples_per_prompt
    fb = config.feedback
    created = 0
    for index, prompt in enumerate(prompts):
        seeds = [
            config.seed * 1_000_003 + prompt.pk * 10 + k + 100 * context.iteration for k in range(per_prompt)
        ]
        images = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            images.append(
                sample(
                    adapter,
                    [prompt.text],
                    num_inference_steps=fb.sampling_steps,
                    guidance_scale=fb.guidance_scale,
                    generator=generator,
                )[0]
            )
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
        context.progress_callback("sampling")(index + 1, len(prompts), {"images": float(created)})
    round_record_outputs(
        round_id=context.training_round.pk,
        iteration=context.iteration,
        sampled_prompts=[p.pk for p in prompts],
        sampled_images=created,
    )


# --- stage 4: insertion and push-back ----------------------------------------------------------------


def stage_inserting(context: StageContext) -> None:
    import torch

    from annotation.services.model_pairs import model_pairs_replace
    from annotation.services.tasks import ranking_task_ensure
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
    loader = storage_image_loader()
    rng = random.Random(config.seed + 31 * context.iteration)
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
        with torch.no_grad():
            pictures = [loader(img.file.name, img.sha256) for img in all_images]
            scores = model.score_images([prompt.text] * len(all_images), pictures).tolist()
        model_pairs_replace(
            prompt=prompt,
            consensus=consensus,
            new_images=new_images,
            scores={img.pk: s for img, s in zip(all_images, scores, strict=True)},
            iteration=context.iteration + 1,
        )
        if rng.random() < config.push_back.share_of_prompts:
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
