"""The synthetic world in the app: its six gallery generators' images as a gallery, and simulated
experts ranking them. Seeds the run command's demo and the closed-loop tests; uses the same import,
task and ranking services as real data. The ML core (``training.ml.world``) is imported inside the
functions, as everywhere outside ``training/ml/`` and the worker-only modules (``scripts/check_imports.py``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from django.core.files.storage import default_storage
from django.db import transaction

from annotation.models import RankingTask, TaskStatus
from annotation.services.consensus import consensus_recompute
from annotation.services.imports import annotator_ensure, ranking_import
from annotation.services.tasks import ranking_tasks_create_for_complete_galleries
from gallery.models import Category, Generator, GeneratorKind, Image, Prompt, Subcategory
from gallery.services.images import NewImage, image_check_bytes, images_register
from gallery.services.prompts import prompt_ensure

# Gallery names as in the paper; the world's generators imitate their error profiles.
DISPLAY_NAMES = {
    "flux": "FLUX",
    "sd3": "SD3",
    "sdxl": "SDXL",
    "sd15": "SD1.5",
    "rpg": "RPG",
    "instancediffusion": "InstanceDiffusion",
}
WORLD_SOURCE = "synthetic"
WORLD_BASE_SLUG = "world-base-it0"


@dataclass
class WorldSeedReport:
    prompts: int = 0
    images: int = 0
    tasks_created: int = 0


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@transaction.atomic
def world_generators_ensure() -> dict[str, Generator]:
    from training.ml.world import GALLERY_GENERATORS

    generators = {}
    for name in GALLERY_GENERATORS:
        generators[name], _ = Generator.objects.get_or_create(
            slug=f"world-{name}",
            defaults={
                "name": f"{DISPLAY_NAMES.get(name, name)} (synthetic world)",
                "kind": GeneratorKind.GALLERY,
                "description": f"The synthetic world's imitation of {DISPLAY_NAMES.get(name, name)}'s strengths and errors.",
            },
        )
    Generator.objects.get_or_create(
        slug=WORLD_BASE_SLUG,
        defaults={
            "name": "World base model · iteration 0",
            "kind": GeneratorKind.BASE,
            "base_iteration": 0,
            "weights_uri": "synthetic-world",
            "description": "The synthetic world's tiny pixel-space diffusion model, before feedback learning.",
        },
    )
    return generators


def _category_of(subcategory: str) -> tuple[Category, Subcategory | None]:
    from training.ml.world import REWARD_CATEGORY

    category = Category.objects.get(slug=REWARD_CATEGORY[subcategory])
    sub = Subcategory.objects.filter(slug=subcategory).first()
    return category, sub


def world_gallery_seed(
    *,
    per_subcategory: int,
    seed: int = 0,
    required_rankings: int | None = None,
    subcategories: Sequence[str] | None = None,
) -> WorldSeedReport:
    """Prompts of every subcategory (or of ``subcategories``) with one image from each of the six world
    generators, and their tasks."""
    from training.ml.world import GALLERY_GENERATORS, SUBCATEGORIES, generate_prompts

    unknown = set(subcategories or ()) - set(SUBCATEGORIES)
    if unknown:
        raise ValueError(f"unknown subcategories: {', '.join(sorted(unknown))}")
    report = WorldSeedReport()
    generators = world_generators_ensure()
    for subcategory in SUBCATEGORIES:
        if subcategories is not None and subcategory not in subcategories:
            continue
        category, sub = _category_of(subcategory)
        for index, text in enumerate(generate_prompts(subcategory, per_subcategory, seed)):
            with transaction.atomic():
                prompt, _ = prompt_ensure(
                    text=text,
                    category=category,
                    subcategory=sub,
                    source=WORLD_SOURCE,
                    licence="generated (synthetic world)",
                )
                report.prompts += 1
                items = []
                for k, (name, world_generator) in enumerate(GALLERY_GENERATORS.items()):
                    image_seed = seed * 1_000_003 + index * 17 + k
                    items.append(
                        NewImage(
                            generator=generators[name],
                            image=image_check_bytes(_png(world_generator.generate(prompt.text, image_seed))),
                            seed=image_seed,
                            params={"world_generator": name},
                        )
                    )
                report.images += sum(r.created for r in images_register(prompt=prompt, items=items))
    report.tasks_created = ranking_tasks_create_for_complete_galleries(
        required_rankings=required_rankings
    ).created
    return report


def _open_image(image: Image):
    from PIL import Image as PILImage

    with default_storage.open(image.file.name, "rb") as handle:
        return PILImage.open(io.BytesIO(handle.read())).convert("RGB")


def world_rankings_simulate(
    *, per_task: int, seed: int = 0, task_ids: list[int] | None = None, recompute_consensus: bool = True
) -> int:
    """Simulated experts (the world's default panel) rank open tasks of synthetic prompts.

    Each task gets rankings from up to `per_task` distinct experts (never the same expert twice).
    """
    from training.ml.world import default_panel

    panel = default_panel(seed)
    experts = [(expert, annotator_ensure(username=f"sim-{expert.name}")) for expert in panel]
    tasks = RankingTask.objects.filter(status=TaskStatus.OPEN, prompt__source=WORLD_SOURCE, is_gold=False)
    if task_ids is not None:
        tasks = tasks.filter(pk__in=task_ids)
    written = 0
    for task in tasks.select_related("prompt").prefetch_related("task_images__image").order_by("id"):
        images = [ti.image for ti in task.task_images.all()]
        pictures = [_open_image(image) for image in images]
        already = set(task.rankings.values_list("annotator_id", flat=True))
        chosen = [(e, u) for e, u in experts if u.pk not in already][: max(0, per_task - len(already))]
        for expert, user in chosen:
            order = expert.rank(task.prompt.text, pictures)
            with transaction.atomic():
                _, created = ranking_import(
                    prompt=task.prompt,
                    ordering=[[images[i]] for i in order],
                    annotator=user,
                    source="simulated",
                    iteration=task.iteration,
                )
            written += created
        if chosen and recompute_consensus:
            consensus_recompute(task_id=task.pk)
    return written


def world_prompts() -> int:
    return Prompt.objects.filter(source=WORLD_SOURCE).count()
