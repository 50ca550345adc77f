from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image as PILImage

from rankmath.rankformats import ITERCOMP_GALLERY

ROOT = Path(__file__).resolve().parents[2]
# The shared data folder sits beside the checkout (../shared); STUDIO_SHARED_DIR points elsewhere.
_SHARED_CANDIDATES = [
    Path(os.environ["STUDIO_SHARED_DIR"]) if os.environ.get("STUDIO_SHARED_DIR") else None,
    ROOT.parent / "shared",
    ROOT / "shared",
]
COMPBENCH = next(
    (
        c / "data" / "t2i-compbench"
        for c in _SHARED_CANDIDATES
        if c and (c / "data" / "t2i-compbench").is_dir()
    ),
    ROOT.parent / "shared" / "data" / "t2i-compbench",
)


def png_bytes(seed: int, size: tuple[int, int] = (16, 16), fmt: str = "PNG") -> bytes:
    """A small image whose pixels depend on ``seed`` (distinct seeds → distinct bytes)."""
    image = PILImage.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    image.putpixel((0, 0), (seed % 256, (seed // 256) % 256, (seed // 65536) % 256))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def write_itercomp(folder: Path, records: list[dict], name: str = "color_itercomp.json") -> Path:
    """IterComp records with images on disk; ``records`` give prompt, rank and a seed per image."""
    out = []
    for index, record in enumerate(records):
        entry = {"prompt": record["prompt"]}
        for g, name_ in enumerate(ITERCOMP_GALLERY):
            relative = f"images/{name_}/{index:04d}.png"
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(png_bytes(record.get("seed", index) * 10 + g))
            entry[f"image_{name_}"] = relative
        entry["index"] = record.get("index", index)
        entry["rank"] = record["rank"]
        out.append(entry)
    path = folder / name
    path.write_text(json.dumps(out, indent=1))
    return path


@pytest.fixture
def itercomp_generators(db):
    from gallery.services.generators import generators_ensure_itercomp_gallery

    return {g.slug: g for g in generators_ensure_itercomp_gallery()}
