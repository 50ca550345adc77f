"""Write the gallery back out as a manifest, the unranked format it is imported from.

Reads only (no database writes): images are copied from storage into ``<out>/images/…`` under their content
hash, and records point at them relative to the written file, so an export can be imported elsewhere as is.
The ranked formats (IterComp, ImageReward) carry an annotator's rankings, which belong to the annotation
app: ``annotation.gallery_exports`` writes them with :func:`image_copy_out`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

from django.core.files.storage import default_storage

from gallery.imaging import ALLOWED_FORMATS
from gallery.models import Image
from gallery.promptfiles import category_name_of


def image_copy_out(image: Image, out_dir: Path, folder: str) -> str:
    """Copy the image's file to ``<out_dir>/<folder>/<sha256>.<ext>`` (once) and return that relative path."""
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
                "image": image_copy_out(image, out_dir, f"images/{image.generator.slug}"),
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
