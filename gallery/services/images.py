"""Writes of images: validated, content-addressed registration and display derivatives.

Every image — imported from files, from a manifest, or drawn by a generation job — is registered here, so
validation, storage keys and deduplication are the same everywhere. Bytes go through ``default_storage``
only (filesystem or S3), under keys derived from their sha256: identical bytes are stored once, and two
Image rows (say the same picture filed under two prompts) may share them.
"""

from __future__ import annotations

import os
import stat
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
        status = os.stat(path)
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError(str(path))
        size = status.st_size
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


def storage_put(key: str, data: bytes, written: list[str] | None = None) -> bool:
    """Write content-addressed bytes once. Returns False when they were already stored; a new key is
    appended to ``written`` (so a caller whose rows roll back can remove what it wrote)."""
    if default_storage.exists(key):
        return False
    name = default_storage.save(key, ContentFile(data))
    if name != key:
        # Lost a race with a concurrent identical upload; the storage made up a new name. The bytes under
        # the canonical key are the same (same hash), so drop the duplicate.
        default_storage.delete(name)
        return False
    if written is not None:
        written.append(key)
    return True


def storage_remove_unreferenced(keys: Sequence[str]) -> int:
    """Delete files a rolled-back row wrote, unless a committed image row refers to them meanwhile (a
    concurrent import of the same bytes). Returns how many were deleted."""
    referenced = set(Image.objects.filter(file__in=keys).values_list("file", flat=True)) | set(
        Image.objects.filter(display_file__in=keys).values_list("display_file", flat=True)
    )
    removed = 0
    for key in keys:
        if key not in referenced and default_storage.exists(key):
            default_storage.delete(key)
            removed += 1
    return removed


@dataclass(frozen=True)
class RegisteredImage:
    image: Image
    created: bool  # a new Image row
    stored: bool  # bytes newly written (False: identical bytes were already in storage)
    # The prompt already had these bytes under another generator: that row is returned, never re-labelled.
    other_generator: bool = False


@dataclass(frozen=True)
class NewImage:
    generator: Generator
    image: CheckedImage
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _display_put(checked: CheckedImage, written: list[str] | None = None) -> str:
    key = display_key(checked.sha256)
    if not default_storage.exists(key):
        derivative, _, _ = make_display(checked.data)
        storage_put(key, derivative, written)
    return key


@transaction.atomic(savepoint=False)
def images_register(
    *,
    prompt: Prompt,
    items: Sequence[NewImage],
    iteration: int = 0,
    with_display: bool = True,
    written: list[str] | None = None,
) -> list[RegisteredImage]:
    """Register several images of one prompt (a gallery row) with two queries instead of a few per image.

    No savepoint of its own (``savepoint=False``): inside a caller's transaction a failure here fails the
    caller's block — an import row is itself a savepoint — and saving a savepoint pair per call matters
    when 21,000 images come in.

    Registering the same bytes again for the same prompt changes nothing (the first generator, seed and
    params are kept: bytes the prompt already has under another generator are that image, not a new one).
    Files written here stay if the surrounding transaction rolls back, unless the caller passes ``written``
    (the keys newly stored are appended) and removes them (`storage_remove_unreferenced`), as the gallery
    import does for a failed row.
    """
    stored: dict[str, bool] = {}
    displays: dict[str, str] = {}
    for item in items:
        sha = item.image.sha256
        if sha not in stored:
            stored[sha] = storage_put(item.image.storage_key, item.image.data, written)
            if with_display:
                displays[sha] = _display_put(item.image, written)
    results = _rows_for(prompt, items, iteration, displays)
    seen: set[str] = set()
    out = []
    for item, (row, created) in zip(items, results, strict=True):
        newly_stored = stored[item.image.sha256] and item.image.sha256 not in seen
        seen.add(item.image.sha256)
        out.append(
            RegisteredImage(
                image=row,
                created=created,
                stored=newly_stored,
                other_generator=row.generator_id != item.generator.pk,
            )
        )
    return out


def _rows_for(
    prompt: Prompt, items: Sequence[NewImage], iteration: int, displays: dict[str, str]
) -> list[tuple[Image, bool]]:
    """One row per item, existing or new; items with the same bytes share a row."""
    # Keyed by the bytes alone: the same picture of a prompt is one image whichever generator a later
    # import claims drew it (re-importing an export under another --generator re-labels nothing).
    keys = [item.image.sha256 for item in items]
    query = Image.objects.filter(prompt=prompt, sha256__in=set(keys)).order_by("pk")

    def by_sha() -> dict[str, Image]:
        rows: dict[str, Image] = {}
        for row in query.all():
            rows.setdefault(row.sha256, row)
        return rows

    existing = by_sha()
    missing: dict[str, Image] = {}
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
            existing = by_sha()
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
