"""Rows for consensus and export tests, written straight through the ORM and the storage API.

Kept independent of the gallery's import services so these tests exercise only the consensus and
export code. Images are real PNG bytes in default_storage, content-addressed like the gallery's.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from annotation.models import Ranking, RankingTask, TaskImage
from gallery.categories import CATEGORIES
from gallery.models import Category, Generator, Image, Prompt, Subcategory

ITERCOMP_SIX = ("sd15", "sdxl", "sd3", "flux", "rpg", "instancediffusion")


def category(slug: str) -> Category:
    """The category (transactional tests flush the seeded rows, so recreate them on demand)."""
    spec = next(c for c in CATEGORIES if c.slug == slug)
    obj, _ = Category.objects.get_or_create(
        slug=slug, defaults={"name": spec.name, "position": spec.position, "allows_ties": spec.allows_ties}
    )
    return obj


def subcategory(slug: str, category_slug: str = "attribute_binding") -> Subcategory:
    obj, _ = Subcategory.objects.get_or_create(
        slug=slug, defaults={"category": category(category_slug), "name": slug.title()}
    )
    return obj


def generator(slug: str, kind: str = "gallery", iteration: int | None = None) -> Generator:
    obj, _ = Generator.objects.get_or_create(
        slug=slug,
        defaults={
            "name": slug.upper(),
            "kind": kind,
            "base_iteration": iteration,
            "joined_iteration": iteration or 0,
        },
    )
    return obj


def prompt(
    text: str,
    category_slug: str = "spatial",
    *,
    sub: str | None = None,
    split: str = "train",
    source: str = "t2i-compbench",
    licence: str = "MIT",
) -> Prompt:
    return Prompt.objects.create(
        text=text,
        category=category(category_slug),
        subcategory=subcategory(sub, category_slug) if sub else None,
        split=split,
        source=source,
        licence=licence,
    )


_counter = {"n": 0}


def png_bytes(seed: int | None = None) -> bytes:
    if seed is None:
        _counter["n"] += 1
        seed = _counter["n"] * 7919
    colour = (seed % 256, (seed // 256) % 256, (seed // 65536 + 97) % 256)
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def image_from_bytes(p: Prompt, gen: Generator, data: bytes, ext: str = "png", iteration: int = 0) -> Image:
    sha = hashlib.sha256(data).hexdigest()
    name = f"images/{sha[:2]}/{sha}.{ext}"
    if not default_storage.exists(name):
        name = default_storage.save(name, ContentFile(data))
    with PILImage.open(io.BytesIO(data)) as im:
        width, height = im.size
    return Image.objects.create(
        prompt=p,
        generator=gen,
        file=name,
        sha256=sha,
        format=ext,
        width=width,
        height=height,
        iteration=iteration,
    )


def task(
    p: Prompt,
    generators: Sequence[str] = ITERCOMP_SIX,
    *,
    required: int = 3,
    iteration: int = 0,
    is_gold: bool = False,
    gold_ordering=None,
) -> tuple[RankingTask, list[int]]:
    """A ranking task over one fresh image per generator; returns the task and its image ids in order."""
    t = RankingTask.objects.create(
        prompt=p,
        required_rankings=required,
        iteration=iteration,
        is_gold=is_gold,
        gold_ordering=gold_ordering,
    )
    ids = []
    for position, slug in enumerate(generators):
        img = image_from_bytes(p, generator(slug), png_bytes())
        TaskImage.objects.create(task=t, image=img, position=position)
        ids.append(img.pk)
    return t, ids


def rank(t: RankingTask, user, ordering, *, source: str = "browser") -> Ranking:
    """Store a ranking; ``ordering`` may be flat (strict) or a list of tie groups of image ids."""
    groups = [[x] if isinstance(x, int) else list(x) for x in ordering]
    return Ranking.objects.create(task=t, annotator=user, ordering=groups, shown_order=[], source=source)
