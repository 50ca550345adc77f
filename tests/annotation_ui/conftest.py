"""Gallery rows and ranking tasks for the ranking-experience tests, built the way production builds them:
prompts through gallery.services.prompt_ensure, image files through default_storage."""

from __future__ import annotations

import io
import itertools

import pytest
from PIL import Image as PILImage

from annotation.models import RankingTask, TaskImage
from gallery.models import Category, Generator, Image
from gallery.services import prompt_ensure
from gallery.services.images import image_register

# Real gallery names, so tests can prove none of them reaches an annotator's page.
GENERATOR_NAMES = (
    "FLUX-dev",
    "SD3-medium",
    "SDXL-base",
    "SD1.5",
    "RPG-DiffusionMaster",
    "InstanceDiffusion",
    "IterComp-it1",
    "IterComp-it2",
)
_counter = itertools.count(1)


def png_bytes(seed: int, size: int = 48) -> bytes:
    colour = ((seed * 53) % 256, (seed * 97) % 256, (seed * 193) % 256)
    image = PILImage.new("RGB", (size, size), colour)
    # A distinct pixel pattern per seed, so every image has its own content hash.
    image.putpixel((seed % size, (seed // size) % size), (255 - colour[0], 0, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def generators(n: int) -> list[Generator]:
    result = []
    for name in GENERATOR_NAMES[:n]:
        slug = name.lower().replace(".", "-").replace(" ", "-")
        generator, _ = Generator.objects.get_or_create(slug=slug, defaults={"name": name})
        result.append(generator)
    return result


def make_image(prompt, generator) -> Image:
    # The gallery's own registration: validated, content-addressed through default_storage, with derivative.
    return image_register(prompt=prompt, generator=generator, image=png_bytes(next(_counter))).image


def make_task(
    *,
    category: str = "spatial",
    n_images: int = 6,
    required: int = 3,
    gold: bool = False,
    text: str | None = None,
) -> RankingTask:
    cat = Category.objects.get(slug=category)
    prompt, _ = prompt_ensure(text=text or f"a red cube left of a blue ball #{next(_counter)}", category=cat)
    images = [make_image(prompt, g) for g in generators(n_images)]
    task = RankingTask.objects.create(
        prompt=prompt,
        required_rankings=required,
        is_gold=gold,
        gold_ordering=[[im.pk] for im in images] if gold else None,
    )
    TaskImage.objects.bulk_create(TaskImage(task=task, image=im, position=i) for i, im in enumerate(images))
    return task


@pytest.fixture
def task_factory(db):
    return make_task


def rank_fields(order: list[int]) -> dict[str, str]:
    """Form fields for a ranking given as labels best first, e.g. [3, 1, 2] -> rank_3=1, rank_1=2, rank_2=3."""
    return {f"rank_{label}": str(position) for position, label in enumerate(order, start=1)}


def submit_data(claim, order: list[int] | None = None, **extra) -> dict[str, str]:
    import uuid

    order = order or list(range(1, len(claim.shown_order) + 1))
    data = {"task": str(claim.task_id), "idempotency_key": str(uuid.uuid4()), "shown_at": "0"}
    data.update(rank_fields(order))
    data.update(extra)
    return data


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # These tests create many accounts; the production hasher's deliberate slowness only costs CPU here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
