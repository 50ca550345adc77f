"""Reads of the gallery domain."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from django.db.models import Count, Q
from django.urls import reverse

from gallery.imaging import display_size
from gallery.models import Category, Generator, GeneratorKind, Image, Prompt

# IterComp's gallery: six models. A prompt's gallery is complete with one image from each of that many.
GALLERY_SIZE = 6


def category_overview() -> list[dict[str, object]]:
    rows = Category.objects.annotate(
        n_prompts=Count("prompts", distinct=True),
        n_open_tasks=Count(
            "prompts__ranking_tasks", filter=Q(prompts__ranking_tasks__status="open"), distinct=True
        ),
    )
    return [{"category": c, "prompts": c.n_prompts, "open_tasks": c.n_open_tasks} for c in rows]


def complete_galleries(
    *, min_generators: int = GALLERY_SIZE, category: Category | None = None, chunk: int = 500
) -> Iterator[tuple[Prompt, list[Image]]]:
    """(prompt, its gallery images) for each prompt with images from ≥ ``min_generators`` gallery generators.

    One image per generator: the earliest registered, so the set (and hence the task it makes) is stable
    when the same generator later adds another sample.
    """
    prompts = Prompt.objects.annotate(
        n_generators=Count(
            "images__generator", filter=Q(images__generator__kind=GeneratorKind.GALLERY), distinct=True
        )
    ).filter(n_generators__gte=min_generators)
    if category is not None:
        prompts = prompts.filter(category=category)
    ids = list(prompts.order_by("id").values_list("id", flat=True))
    for start in range(0, len(ids), chunk):
        batch = ids[start : start + chunk]
        by_prompt: dict[int, list[Image]] = {pid: [] for pid in batch}
        first_per_generator = (
            Image.objects.filter(prompt_id__in=batch, generator__kind=GeneratorKind.GALLERY)
            .order_by("prompt_id", "generator_id", "id")
            .distinct("prompt_id", "generator_id")  # PostgreSQL DISTINCT ON
        )
        for image in first_per_generator:
            by_prompt[image.prompt_id].append(image)
        for prompt in Prompt.objects.filter(id__in=batch).order_by("id"):
            yield prompt, by_prompt[prompt.id]


@dataclass(frozen=True)
class ImageDisplay:
    """What a page needs to show an image without telling who made it (annotators rank blind)."""

    url: str
    width: int
    height: int
    alt: str
    original_url: str
    # Smaller than the display box: the page enlarges it, keeping hard pixel edges.
    pixelated: bool


def file_url(key: str) -> str:
    return reverse("gallery:file", kwargs={"key": key})


def image_display(image: Image, *, alt: str | None = None) -> ImageDisplay:
    """URL (content-addressed, no generator name), size and alt text of an image's display derivative.

    Falls back to the original while no derivative exists. The alt text names the prompt, never the model.
    """
    original = file_url(image.file.name)
    if image.display_file:
        width, height = display_size(image.width, image.height)
        url = file_url(image.display_file.name)
    else:
        width, height, url = image.width, image.height, original
    if alt is None:
        alt = f"Candidate image for: {image.prompt.text}"
    return ImageDisplay(
        url=url,
        width=width,
        height=height,
        alt=alt,
        original_url=original,
        pixelated=max(image.width, image.height) < DISPLAY_BOX,
    )


# Images shown smaller than this (px, longest side) are enlarged by the page with pixelated rendering.
DISPLAY_BOX = 256


def itercomp_name_mapping() -> dict[str, str]:
    """Generator slug -> the IterComp gallery model it was mapped to (only generators that have one)."""
    return dict(Generator.objects.exclude(itercomp_name="").values_list("slug", "itercomp_name"))
