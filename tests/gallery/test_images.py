"""Image validation, content-addressed storage, deduplication and display derivatives."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from gallery.imaging import ImageRejected, check_image, display_size, make_display
from gallery.models import Category, Generator, Image, Prompt
from gallery.services.images import image_register
from gallery.services.prompts import prompt_ensure

from .conftest import png_bytes

LIMITS = {"max_pixels": 4096 * 4096, "max_bytes": 10_000_000}


def noisy_jpeg() -> bytes:
    image = PILImage.frombytes("RGB", (64, 64), bytes((i * 7919) % 251 for i in range(64 * 64 * 3)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a canvas of width×height but carries no pixel data (a decompression-bomb probe)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + iend


@pytest.mark.parametrize("fmt,name", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
def test_allowed_formats_pass_with_their_size_and_content_address(fmt, name):
    data = png_bytes(3, (40, 24), fmt=fmt)
    checked = check_image(data, **LIMITS)
    assert (checked.format, checked.width, checked.height, checked.extension) == (fmt, 40, 24, name)
    assert checked.storage_key == f"images/{checked.sha256[:2]}/{checked.sha256[2:4]}/{checked.sha256}.{name}"


@pytest.mark.parametrize(
    "data,message",
    [
        (b"prompt,generator\n", "not an image"),
        (b"", "empty"),
        (png_bytes(1, (64, 64))[:-40], "truncated or corrupt"),
        (png_bytes(1, (64, 64), fmt="JPEG")[:300], "truncated or corrupt"),
        (noisy_jpeg()[: len(noisy_jpeg()) // 2], "truncated or corrupt image data"),
        (png_header_only(100_000, 100_000), "decompression bomb"),
        (png_header_only(5000, 4000), "more than the limit"),
        (png_bytes(1, fmt="GIF"), "format GIF is not allowed"),
        (png_bytes(1, fmt="BMP"), "format BMP is not allowed"),
    ],
    ids=[
        "text",
        "empty",
        "truncated-png",
        "truncated-jpeg-header",
        "truncated-jpeg-pixels",
        "bomb",
        "too-many-pixels",
        "gif",
        "bmp",
    ],
)
def test_bad_bytes_are_rejected_with_a_reason(data, message):
    with pytest.raises(ImageRejected, match=message):
        check_image(data, **LIMITS)


def test_byte_limit_is_checked_before_decoding():
    with pytest.raises(ImageRejected, match="more than the limit of 20"):
        check_image(png_bytes(1), max_pixels=10**9, max_bytes=20)


def test_display_derivative_shrinks_large_images_and_never_enlarges_small_ones():
    assert display_size(1024, 768) == (512, 384)
    assert display_size(64, 32) == (64, 32)
    big, w, h = make_display(png_bytes(2, (1024, 512)))
    assert (w, h) == (512, 256) and PILImage.open(io.BytesIO(big)).size == (512, 256)
    small_png = png_bytes(2, (24, 24))
    small, w, h = make_display(small_png)
    decoded = PILImage.open(io.BytesIO(small))
    assert decoded.format == "WEBP" and (w, h) == decoded.size == (24, 24)
    # Lossless: the exact pixels survive, so pixelated enlargement shows what the model drew.
    assert decoded.convert("RGB").tobytes() == PILImage.open(io.BytesIO(small_png)).convert("RGB").tobytes()


@pytest.fixture
def prompt_and_generators(db):
    category = Category.objects.get(slug="spatial")
    prompt, _ = prompt_ensure(text="a dog on the left of a cat", category=category)
    other, _ = prompt_ensure(text="a cat on the left of a dog", category=category)
    gen_a = Generator.objects.create(name="Gen A", slug="gen-a")
    gen_b = Generator.objects.create(name="Gen B", slug="gen-b")
    return prompt, other, gen_a, gen_b


def test_identical_bytes_are_stored_once_and_registering_again_changes_nothing(prompt_and_generators):
    prompt, other, gen_a, gen_b = prompt_and_generators
    data = png_bytes(7, (32, 32))
    first = image_register(prompt=prompt, generator=gen_a, image=data, seed=5, params={"steps": 2})
    assert first.created and first.stored
    again = image_register(prompt=prompt, generator=gen_a, image=data, seed=99)
    assert (again.created, again.stored, again.image.pk, again.image.seed) == (
        False,
        False,
        first.image.pk,
        5,
    )
    shared = image_register(prompt=other, generator=gen_b, image=data)
    assert shared.created and not shared.stored
    assert (
        shared.image.file.name
        == first.image.file.name
        == f"images/{first.image.sha256[:2]}/{first.image.sha256[2:4]}/{first.image.sha256}.png"
    )
    assert Image.objects.count() == 2
    directory = f"images/{first.image.sha256[:2]}/{first.image.sha256[2:4]}"
    assert default_storage.listdir(directory)[1] == [f"{first.image.sha256}.png"]
    assert shared.image.display_file.name == first.image.display_file.name
    assert default_storage.exists(first.image.display_file.name)
    with default_storage.open(first.image.file.name, "rb") as handle:
        assert handle.read() == data


def test_register_refuses_bad_bytes_and_writes_nothing(prompt_and_generators):
    prompt, _, gen_a, _ = prompt_and_generators
    with pytest.raises(ImageRejected):
        image_register(prompt=prompt, generator=gen_a, image=b"GIF89a not really")
    assert Image.objects.count() == 0 and Prompt.objects.count() == 2
