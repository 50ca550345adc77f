"""Gallery uploads the way an admin's browser sends them: a zip of a manifest and its images."""

from __future__ import annotations

import io
import zipfile

from tests.gallery.conftest import png_bytes

SIX = ("sd15", "sdxl", "sd3", "flux", "rpg", "instancediffusion")


def manifest_zip(prompts: list[str], *, generators=SIX, bad_line: bool = False, seed: int = 0) -> bytes:
    """``manifest.csv`` + ``images/…``: every prompt drawn by every generator; ``bad_line`` adds a row whose
    image file is missing (line 2 + rows)."""
    lines = ["prompt,category,generator,image,seed,params"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for p, text in enumerate(prompts):
            for g, slug in enumerate(generators):
                name = f"images/{slug}/{p:03d}.png"
                archive.writestr(name, png_bytes(seed * 1000 + p * 10 + g, size=(32, 32)))
                lines.append(f'"{text}",color,{slug},{name},{p},')
        if bad_line:
            lines.append(f'"{prompts[0]} again",color,sdxl,images/missing.png,1,')
        archive.writestr("gallery/manifest.csv", "\n".join(lines) + "\n")
    # The manifest sits in a sub-folder: image paths are relative to its folder, as for the CLI.
    return _move_images_under(buffer.getvalue(), "gallery/")


def _move_images_under(data: bytes, prefix: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            name = info.filename if info.filename.startswith(prefix) else prefix + info.filename
            target.writestr(name, source.read(info))
    return out.getvalue()
