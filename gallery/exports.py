"""Write the gallery back out in the formats it is imported from (manifest, IterComp, ImageReward).

Reads only (no database writes): images are copied from storage into ``<out>/images/…`` under their content
hash, and records point at them relative to the written file, so an export can be imported elsewhere as is.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

from django.contrib.auth.models import AbstractUser
from django.core.files.storage import default_storage

from annotation.models import Ranking
from gallery.imaging import ALLOWED_FORMATS
from gallery.models import Image
from gallery.promptfiles import category_name_of
from rankmath.rankformats import ITERCOMP_GALLERY, ImageRewardRecord, IterCompRecord, validate_ordering


def _copy(image: Image, out_dir: Path, folder: str) -> str:
    relative = f"{folder}/{image.sha256}.{ALLOWED_FORMATS.get(image.format, 'png')}"
    target = out_dir / relative
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with default_storage.open(image.file.name, "rb") as handle:
            target.write_bytes(handle.read())
    return relative


def _category_name(image: Image) -> str:
    prompt = image.prompt
    return category_name_of((prompt.category.slug, prompt.subcategory.slug if prompt.subcategory else None))


def export_manifest(*, out_path: Path, images: Iterable[Image] | None = None) -> int:
    """CSV or JSONL (by suffix) with one row per image; returns the number of rows."""
    if images is None:
        images = Image.objects.select_related(
            "prompt__category", "prompt__subcategory", "generator"
        ).order_by("id")
    out_dir = out_path.parent
    rows = []
    for image in images:
        rows.append(
            {
                "prompt": image.prompt.text,
                "category": _category_name(image),
                "generator": image.generator.slug,
                "image": _copy(image, out_dir, f"images/{image.generator.slug}"),
                "seed": image.seed,
                "params": image.params,
            }
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix.lower() == ".csv":
        with open(out_path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=["prompt", "category", "generator", "image", "seed", "params"]
            )
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        **row,
                        "seed": "" if row["seed"] is None else row["seed"],
                        "params": json.dumps(row["params"]),
                    }
                )
    else:
        with open(out_path, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def _rankings_of(annotator: AbstractUser):
    return (
        Ranking.objects.filter(annotator=annotator)
        .select_related("task__prompt")
        .prefetch_related("task__task_images__image__generator")
        .order_by("task_id")
    )


def _source_id(images: Iterable[Image], fallback: object) -> object:
    for image in images:
        if "source_id" in image.params:
            return image.params["source_id"]
    return fallback


def export_itercomp(*, out_path: Path, annotator: AbstractUser) -> tuple[int, int]:
    """IterComp records of the annotator's strict rankings over the six gallery models.

    Returns (records written, rankings skipped because they have ties or another image set).
    """
    records, skipped = [], 0
    for ranking in _rankings_of(annotator):
        images = {ti.image.pk: ti.image for ti in ranking.task.task_images.all()}
        by_generator = {image.generator.slug: image for image in images.values()}
        ordering = validate_ordering(ranking.ordering)
        if sorted(by_generator) != sorted(ITERCOMP_GALLERY) or len(images) != len(ITERCOMP_GALLERY):
            skipped += 1
            continue
        if any(len(group) > 1 for group in ordering):
            skipped += 1  # IterComp's rank lists cannot express ties
            continue
        record = IterCompRecord(
            index=int(_source_id(images.values(), ranking.task_id)),
            prompt=ranking.task.prompt.text,
            images={
                slug: _copy(image, out_path.parent, f"images/{slug}") for slug, image in by_generator.items()
            },
            ordering=[[images[group[0]].generator.slug] for group in ordering],
        )
        records.append(record.to_json())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    return len(records), skipped


def export_imagereward(*, out_path: Path, annotator: AbstractUser) -> int:
    """ImageReward records ({id, prompt, generations, ranking}, dense ranks, ties kept) of the annotator."""
    records = []
    for ranking in _rankings_of(annotator):
        task_images = list(ranking.task.task_images.all())  # ordered by position
        index = {ti.image.pk: i for i, ti in enumerate(task_images)}
        record = ImageRewardRecord(
            id=str(_source_id((ti.image for ti in task_images), ranking.task_id)),
            prompt=ranking.task.prompt.text,
            generations=tuple(_copy(ti.image, out_path.parent, "images") for ti in task_images),
            ordering=[[index[item] for item in group] for group in validate_ordering(ranking.ordering)],
        )
        records.append(record.to_json())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    return len(records)
