"""Writes of images: validated, content-addressed registration and display derivatives.

Every image — imported from files, from a manifest, or drawn by a generation job — is registered here, so
validation, storage keys and deduplication are the same everywhere. Bytes go through ``default_storage``
only (filesystem or S3), under keys derived from their sha256: identical bytes are stored once, and two
Image rows (say the same picture filed under two prompts) may share them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from gallery.imaging import CheckedImage, ImageRejected, check_image, display_key, make_display
from gallery.models import Generator, Image, Prompt


def image_check_bytes(data: bytes) -> CheckedImage:
    return check_image(data, max_pixels=settings.IMAGE_MAX_PIXELS, max_bytes=settings.IMAGE_MAX_BYTES)


def image_read_checked(path: Path) -> CheckedImage:
    """Read and check a local image file; the size limit is applied before anything is read."""
    try:
        size = os.stat(path).st_size
        if size > settings.IMAGE_MAX_BYTES:
            raise ImageRejected(
                f"file is {size:,} bytes, more than the limit of {settings.IMAGE_MAX_BYTES:,}"
            )
        with open(path, "rb") as handle:
            data = handle.read(settings.IMAGE_MAX_BYTES + 1)
    except FileNotFoundError:
        raise ImageRejected("image file not found") from None
    except IsADirectoryError:
        raise ImageRejected("image path is a folder, not a file") from None
    except PermissionError:
        raise ImageRejected("image file is not readable (permission denied)") from None
    return image_check_bytes(data)


def storage_put(key: str, data: bytes) -> bool:
    """Write content-addressed bytes once. Returns False when they were already stored."""
    if default_storage.exists(key):
        return False
    name = default_storage.save(key, ContentFile(data))
    if name != key:
        # Lost a race with a concurrent identical upload; the storage made up a new name. The bytes under
        # the canonical key are the same (same hash), so drop the duplicate.
        default_storage.delete(name)
        return False
    return True


@dataclass(frozen=True)
class RegisteredImage:
    image: Image
    created: bool  # a new Image row
    stored: bool  # bytes newly written (False: identical bytes were already in storage)


@dataclass(frozen=True)
class NewImage:
    generator: Generator
    image: CheckedImage
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _display_put(checked: CheckedImage) -> str:
    key = display_key(checked.sha256)
    if not default_storage.exists(key):
        derivative, _, _ = make_display(checked.data)
        storage_put(key, derivative)
    return key


@transaction.atomic(savepoint=False)
def images_register(
    *, prompt: Prompt, items: Sequence[NewImage], iteration: int = 0, with_display: bool = True
) -> list[RegisteredImage]:
    """Register several images of one prompt (a gallery row) with two queries instead of a few per image.

    No savepoint of its own (``savepoint=False``): inside a caller's transaction a failure here fails the
    caller's block — an import row is itself a savepoint — and saving a savepoint pair per call matters
    when 21,000 images come in.

    Registering the same bytes again for the same prompt and generator changes nothing (the first seed and
    params are kept). Files written here stay if the surrounding transaction rolls back: they are
    content-addressed, so the next registration of those bytes simply reuses them.
    """
    stored: dict[str, bool] = {}
    displays: dict[str, str] = {}
    for item in items:
        sha = item.image.sha256
        if sha not in stored:
            stored[sha] = storage_put(item.image.storage_key, item.image.data)
            if with_display:
                displays[sha] = _display_put(item.image)
    results = _rows_for(prompt, items, iteration, displays)
    seen: set[str] = set()
    out = []
    for item, (row, created) in zip(items, results, strict=True):
        newly_stored = stored[item.image.sha256] and item.image.sha256 not in seen
        seen.add(item.image.sha256)
        out.append(RegisteredImage(image=row, created=created, stored=newly_stored))
    return out


def _rows_for(
    prompt: Prompt, items: Sequence[NewImage], iteration: int, displays: dict[str, str]
) -> list[tuple[Image, bool]]:
    keys = [(item.generator.pk, item.image.sha256) for item in items]
    query = Image.objects.filter(
        prompt=prompt,
        generator_id__in={g for g, _ in keys},
        sha256__in={sha for _, sha in keys},
    )
    existing = {(row.generator_id, row.sha256): row for row in query}
    missing: dict[tuple[int, str], Image] = {}
    for key, item in zip(keys, items, strict=True):
        if key not in existing and key not in missing:
            missing[key] = Image(
                prompt=prompt,
                generator=item.generator,
                sha256=item.image.sha256,
                file=item.image.storage_key,
                format=item.image.format,
                width=item.image.width,
                height=item.image.height,
                seed=item.seed,
                params=item.params,
                iteration=iteration,
                display_file=displays.get(item.image.sha256, ""),
            )
    if missing:
        try:
            with transaction.atomic():
                Image.objects.bulk_create(missing.values())  # PostgreSQL returns the new ids
        except IntegrityError:
            # A concurrent registration of the same image won the race: its rows are as good as ours.
            existing = {(row.generator_id, row.sha256): row for row in query.all()}
            missing = {}
    for row in existing.values():
        if displays.get(row.sha256) and not row.display_file:
            image_display_ensure(image=row)  # registered earlier without a derivative
    created = set(missing)
    rows = {**existing, **missing}
    return [(rows[key], key in created) for key in keys]


def image_register(
    *,
    prompt: Prompt,
    generator: Generator,
    image: CheckedImage | bytes,
    seed: int | None = None,
    params: dict[str, Any] | None = None,
    iteration: int = 0,
    with_display: bool = True,
) -> RegisteredImage:
    """Register one image of ``prompt`` by ``generator`` (see `images_register`)."""
    checked = image if isinstance(image, CheckedImage) else image_check_bytes(image)
    item = NewImage(generator=generator, image=checked, seed=seed, params=params or {})
    return images_register(prompt=prompt, items=[item], iteration=iteration, with_display=with_display)[0]


@transaction.atomic
def image_display_ensure(*, image: Image, data: bytes | None = None) -> Image:
    """Create the WebP display derivative once (shared by every row with the same bytes) and link it."""
    key = display_key(image.sha256)
    if not default_storage.exists(key):
        if data is None:
            with default_storage.open(image.file.name, "rb") as handle:
                data = handle.read()
        derivative, _, _ = make_display(data)
        storage_put(key, derivative)
    if image.display_file.name != key:
        image.display_file = key
        image.save(update_fields=["display_file"])
    return image
