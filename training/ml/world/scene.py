"""Scenes (what is drawn) and the renderer (how it is drawn).

Geometry lives on a 32-unit reference canvas with integer boxes; rendering at another size scales it. The
renderer also returns each object's own coverage mask, which is the ground truth the oracle is judged
against (the oracle itself only ever sees the composited RGB image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .vocab import BACKGROUND, COLORS, DARK_FACTOR, REFERENCE_CANVAS, SHAPES, SIZE_SPLIT_PX, TEXTURES

SUPERSAMPLE = 4
TEXTURE_PERIOD = 4  # reference pixels; two light rows/cols then two dark ones


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    texture: str
    extent: int  # width = height of the bounding box, reference pixels
    left: int
    top: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}")
        if self.texture not in TEXTURES:
            raise ValueError(f"unknown texture {self.texture!r}")
        if self.extent < 3:
            raise ValueError("extent must be at least 3 reference pixels")

    @property
    def size(self) -> str:
        return "big" if self.extent > SIZE_SPLIT_PX else "small"

    @property
    def center(self) -> tuple[float, float]:
        return (self.left + self.extent / 2, self.top + self.extent / 2)

    def moved(self, left: int, top: int) -> SceneObject:
        return SceneObject(self.shape, self.color, self.texture, self.extent, left, top)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int] = BACKGROUND
    canvas: int = REFERENCE_CANVAS
    notes: tuple[str, ...] = field(default=(), compare=False)  # which errors a generator made, for debugging

    def __post_init__(self) -> None:
        colors = [obj.color for obj in self.objects]
        if len(set(colors)) != len(colors):
            raise ValueError("objects of one scene have distinct colours")


def shape_polygon(shape: str) -> list[tuple[float, float]] | None:
    """Unit-box outline of a shape (None for the circle, drawn as an ellipse)."""
    if shape == "circle":
        return None
    if shape == "square":
        return [(0, 0), (1, 0), (1, 1), (0, 1)]
    if shape == "triangle":
        return [(0.5, 0), (1, 1), (0, 1)]
    if shape == "diamond":
        return [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)]
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=4096)
def _coverage_cached(shape: str, x0: int, y0: int, box: int, canvas: int) -> bytes:
    ss = SUPERSAMPLE
    img = Image.new("L", (canvas * ss, canvas * ss), 0)
    draw = ImageDraw.Draw(img)
    outline = shape_polygon(shape)
    if outline is None:
        draw.ellipse([x0, y0, x0 + box - 1, y0 + box - 1], fill=255)
    else:
        draw.polygon([(x0 + u * (box - 1), y0 + v * (box - 1)) for u, v in outline], fill=255)
    arr = np.asarray(img, dtype=np.float32).reshape(canvas, ss, canvas, ss).mean(axis=(1, 3)) / 255.0
    return arr.astype(np.float32).tobytes()


def object_coverage(obj: SceneObject, canvas: int) -> np.ndarray:
    """Fractional coverage [canvas, canvas] of one object drawn on an output canvas of `canvas` px."""
    scale = canvas / REFERENCE_CANVAS
    ss = SUPERSAMPLE
    # Box corners in supersampled pixels: integers keep the cache small and the drawing exact.
    x0 = round(obj.left * scale * ss)
    y0 = round(obj.top * scale * ss)
    box = round(obj.extent * scale * ss)
    raw = _coverage_cached(obj.shape, x0, y0, box, canvas)
    return np.frombuffer(raw, dtype=np.float32).reshape(canvas, canvas)


def texture_darkness(obj: SceneObject, canvas: int) -> np.ndarray:
    """Boolean map of where the object's dark shade goes.

    The pattern is centred on the object (a dark stripe or a dot through its middle, then every
    TEXTURE_PERIOD px), so even an 8 px object shows its texture symmetrically.
    """
    scale = canvas / REFERENCE_CANVAS
    centers = (np.arange(canvas) + 0.5) / scale
    cx, cy = obj.center
    half = TEXTURE_PERIOD // 2
    dark_u = np.floor(centers - cx + 1).astype(int) % TEXTURE_PERIOD < half
    dark_v = np.floor(centers - cy + 1).astype(int) % TEXTURE_PERIOD < half
    if obj.texture == "solid":
        return np.zeros((canvas, canvas), dtype=bool)
    if obj.texture == "striped":
        return np.broadcast_to(dark_v[:, None], (canvas, canvas)).copy()
    return dark_v[:, None] & dark_u[None, :]


def render_scene_array(scene: Scene, size: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render to float RGB [size, size, 3] in [0, 1] plus each object's coverage mask (drawing order)."""
    canvas = size or scene.canvas
    img = np.empty((canvas, canvas, 3), dtype=np.float32)
    img[:] = np.asarray(scene.background, dtype=np.float32) / 255.0
    coverages = []
    for obj in scene.objects:
        alpha = object_coverage(obj, canvas)
        light = np.asarray(COLORS[obj.color], dtype=np.float32) / 255.0
        dark = light * DARK_FACTOR
        paint = np.where(texture_darkness(obj, canvas)[..., None], dark, light)
        img = img * (1.0 - alpha[..., None]) + paint * alpha[..., None]
        coverages.append(alpha)
    return img, coverages


def to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), mode="RGB")


def render_scene(scene: Scene, size: int | None = None) -> Image.Image:
    return to_pil(render_scene_array(scene, size)[0])


def hard_masks(scene: Scene) -> list[np.ndarray]:
    """Ground-truth object masks on the reference canvas (coverage of at least one half)."""
    return [object_coverage(obj, scene.canvas) >= 0.5 for obj in scene.objects]
