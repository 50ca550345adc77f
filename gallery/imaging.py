"""Image bytes: validation against malformed files and decompression bombs, content addresses, derivatives.

Django-free: limits are passed in (the services read them from settings). Every image the studio keeps
goes through :func:`check_image` first, whichever way it arrived (file import, manifest, generation).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

# Formats a diffusion pipeline or a public dataset delivers; anything else (GIF, TIFF, BMP, SVG…) is refused.
ALLOWED_FORMATS: dict[str, str] = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
# Longest side of the display derivative: six of them side by side fill a wide screen.
DISPLAY_MAX_SIDE = 512


class ImageRejected(ValueError):
    """The bytes are not an image the studio accepts; the message says why."""


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    sha256: str
    format: str  # Pillow's name: PNG, JPEG, WEBP
    width: int
    height: int

    @property
    def extension(self) -> str:
        return ALLOWED_FORMATS[self.format]

    @property
    def storage_key(self) -> str:
        return original_key(self.sha256, self.extension)


def original_key(sha256: str, extension: str) -> str:
    """``images/ab/cd/<sha>.png``: two fan-out levels keep directories (and S3 listings) small."""
    return f"images/{sha256[:2]}/{sha256[2:4]}/{sha256}.{extension}"


def display_key(sha256: str, max_side: int = DISPLAY_MAX_SIDE) -> str:
    return f"display/{sha256[:2]}/{sha256[2:4]}/{sha256}-{max_side}.webp"


def check_image(data: bytes, *, max_pixels: int, max_bytes: int) -> CheckedImage:
    """Accept only a complete, decodable PNG/JPEG/WebP within the byte and pixel limits.

    The pixel count is read from the header and checked *before* anything is decoded, so a small file
    that claims a huge canvas (a decompression bomb) costs nothing. Then ``verify()`` checks the
    container (PNG CRCs) and a full decode catches truncated pixel data that verify misses (JPEG).
    """
    if len(data) > max_bytes:
        raise ImageRejected(f"file is {len(data):,} bytes, more than the limit of {max_bytes:,}")
    if not data:
        raise ImageRejected("file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as probe:
                fmt = probe.format or "?"
                width, height = probe.size
                frames = getattr(probe, "n_frames", 1)
    except UnidentifiedImageError:
        raise ImageRejected("not an image (Pillow cannot identify the file format)") from None
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        raise ImageRejected(f"image refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"truncated or corrupt image header: {exc}") from None
    if fmt not in ALLOWED_FORMATS:
        raise ImageRejected(f"format {fmt} is not allowed (allowed: {', '.join(ALLOWED_FORMATS)})")
    if width <= 0 or height <= 0:
        raise ImageRejected(f"image has an empty canvas ({width}×{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image is {width}×{height} = {width * height:,} pixels, more than the limit of {max_pixels:,}"
        )
    if frames != 1:
        raise ImageRejected(f"animated images are not allowed ({frames} frames)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as image:
                image.verify()
            with PILImage.open(io.BytesIO(data)) as image:
                image.load()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error… for damaged data
        raise ImageRejected(f"truncated or corrupt image data ({type(exc).__name__}: {exc})") from None
    return CheckedImage(
        data=data, sha256=hashlib.sha256(data).hexdigest(), format=fmt, width=width, height=height
    )


def display_size(width: int, height: int, max_side: int = DISPLAY_MAX_SIDE) -> tuple[int, int]:
    """Size of the display derivative: the longest side shrunk to ``max_side``, never enlarged."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_display(data: bytes, max_side: int = DISPLAY_MAX_SIDE) -> tuple[bytes, int, int]:
    """WebP derivative of already-checked image bytes; returns (bytes, width, height).

    Images at or below ``max_side`` keep their exact pixels (lossless WebP) so the browser can enlarge
    them with ``image-rendering: pixelated``; larger ones are downsampled (Lanczos) and stored lossy.
    """
    with PILImage.open(io.BytesIO(data)) as image:
        image.load()
        has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
        converted = image.convert("RGBA" if has_alpha else "RGB")
    width, height = display_size(*converted.size, max_side=max_side)
    out = io.BytesIO()
    if (width, height) == converted.size:
        converted.save(out, format="WEBP", lossless=True, quality=80, method=4)
    else:
        converted = converted.resize((width, height), PILImage.Resampling.LANCZOS)
        converted.save(out, format="WEBP", quality=85, method=4)
    return out.getvalue(), width, height
