"""Write an annotator's rankings of the gallery in the ranked formats it is imported from (IterComp,
ImageReward), next to the images they rank.

Reads only (no database writes). The unranked manifest export is ``gallery.exports.export_manifest``; the
ranked formats live here because the rankings are this app's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from django.contrib.auth.models import AbstractUser

from annotation.models import Ranking
from gallery.exports import image_copy_out
from gallery.models import Image
from rankmath.rankformats import (
    ITERCOMP_GALLERY,
    ImageRewardRecord,
    IterCompRecord,
    itercomp_rank_to_ordering,
    validate_ordering,
)


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


def _itercomp_key(image: Image) -> str:
    """The IterComp name a researcher mapped the image's generator to, else its slug (the import's names)."""
    return image.generator.itercomp_name or image.generator.slug


def _itercomp_gallery(by_generator: dict[str, Image]) -> tuple[str, ...] | None:
    """The six models, then an iterative record's extra models where the imported record had them (else
    by name); None when one of the six is missing."""
    if not set(ITERCOMP_GALLERY) <= set(by_generator):
        return None
    extra = [slug for slug in by_generator if slug not in ITERCOMP_GALLERY]
    extra.sort(key=lambda slug: (by_generator[slug].params.get("itercomp_position", 1_000_000), slug))
    return (*ITERCOMP_GALLERY, *extra)


def export_itercomp(*, out_path: Path, annotator: AbstractUser) -> tuple[int, int]:
    """IterComp records of the annotator's strict rankings over the six gallery models (and the extra
    models of iterative records, with their ``initial_rank``).

    Returns (records written, rankings skipped because they have ties or another image set).
    """
    records, skipped = [], 0
    for ranking in _rankings_of(annotator):
        images = {ti.image.pk: ti.image for ti in ranking.task.task_images.all()}
        by_generator = {_itercomp_key(image): image for image in images.values()}
        ordering = validate_ordering(ranking.ordering)
        gallery = _itercomp_gallery(by_generator)
        if gallery is None or len(images) != len(by_generator):
            skipped += 1
            continue
        if any(len(group) > 1 for group in ordering):
            skipped += 1  # IterComp's rank lists cannot express ties
            continue
        extras = [by_generator[slug] for slug in gallery[len(ITERCOMP_GALLERY) :]]
        initial = next(
            (image.params["initial_rank"] for image in extras if "initial_rank" in image.params), None
        )
        record = IterCompRecord(
            index=int(_source_id([*extras, *images.values()], ranking.task_id)),
            prompt=ranking.task.prompt.text,
            images={
                slug: image_copy_out(image, out_path.parent, f"images/{slug}")
                for slug, image in by_generator.items()
            },
            ordering=[[_itercomp_key(images[group[0]])] for group in ordering],
            gallery=gallery,
            initial_ordering=None
            if initial is None
            else itercomp_rank_to_ordering(initial, gallery[: len(initial)]),
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
            generations=tuple(image_copy_out(ti.image, out_path.parent, "images") for ti in task_images),
            ordering=[[index[item] for item in group] for group in validate_ordering(ranking.ordering)],
        )
        records.append(record.to_json())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    return len(records)
