"""The exact oracle: reads an image (never the scene description) and scores it against a prompt.

Pipeline: estimate the background from the border and white-balance by it (undoes colour casts); mark
saturated pixels and label each with the nearest palette hue; split every colour into connected components
and keep those with a solid core (thin rings where two colours blend at a shared edge are dropped); then read
each object's shape (best IoU with a rendered template of its box), size (box extent), texture (light/dark
profile across rows and columns) and centre. Facts and score come from `facts.py`, shared with the truth.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .facts import SeenObject, count_extra, prompt_facts, score_from_facts
from .grammar import PromptSpec, parse_prompt
from .scene import SUPERSAMPLE, TEXTURE_PERIOD, shape_polygon
from .vocab import BACKGROUND, COLORS, DARK_FACTOR, REFERENCE_CANVAS, SHAPES, SIZE_SPLIT_PX, TEXTURES


@dataclass(frozen=True)
class OracleConfig:
    min_saturation: float = 0.4
    min_chroma: float = 0.12
    min_bg_distance: float = 0.15
    max_hue_distance: float = 40.0  # degrees from the nearest palette hue
    min_area: float = 14.0  # reference pixels
    min_core: float = 4.0  # pixels left after a 1 px erosion, reference pixels
    solid_contrast: float = 0.1  # fitted dark-pattern contrast below which an object is solid
    touch_px: float = 3.0  # reference pixels between masks that still count as touching

    def __post_init__(self) -> None:
        if not 0 < self.min_saturation < 1:
            raise ValueError("min_saturation must be in (0, 1)")
        if self.min_area <= 0 or self.min_core < 0:
            raise ValueError("areas must be positive")
        if not 0 < self.max_hue_distance <= 180:
            raise ValueError("max_hue_distance must be in (0, 180]")
        if self.touch_px < 1:
            raise ValueError("touch_px must be at least one pixel")


DEFAULT_CONFIG = OracleConfig()
PALETTE_NAMES: tuple[str, ...] = tuple(COLORS)
REFERENCE_BACKGROUND = np.asarray(BACKGROUND, dtype=np.float32) / 255.0
PALETTE_RGB = {name: np.asarray(rgb, dtype=np.float32) / 255.0 for name, rgb in COLORS.items()}
PALETTE_HUES = np.array([colorsys.rgb_to_hsv(*(np.array(rgb) / 255.0))[0] * 360.0 for rgb in COLORS.values()])
EIGHT = np.ones((3, 3), dtype=bool)


def as_float_image(image: Any) -> np.ndarray:
    """Accept PIL images, HWC/CHW uint8 or float arrays (and tensors via __array__) -> HWC float [0, 1]."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    else:
        if hasattr(image, "detach"):
            image = image.detach().cpu().float().numpy()
        arr = np.asarray(image)
        if arr.ndim != 3:
            raise ValueError(f"expected one image with 3 dimensions, got shape {arr.shape}")
        if arr.shape[0] == 3 and arr.shape[-1] != 3:
            arr = np.transpose(arr, (1, 2, 0))
        arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    if arr.shape[-1] != 3:
        raise ValueError(f"expected RGB, got shape {arr.shape}")
    return np.clip(arr, 0.0, 1.0)


def white_balance(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map the background (median of the border ring) to the world's reference grey; returns
    (image, background). A per-channel colour cast, as in degraded renders, is undone exactly, so the
    palette colours can be used as they are."""
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    background = np.median(border, axis=0)
    gain = REFERENCE_BACKGROUND / np.maximum(background, 1e-3)
    return np.clip(img * gain, 0.0, 1.0), np.clip(background * gain, 0.0, 1.0)


def hue_degrees(img: np.ndarray) -> np.ndarray:
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    high = img.max(axis=-1)
    chroma = high - img.min(axis=-1)
    safe = np.where(chroma > 1e-6, chroma, 1.0)
    hue = np.where(
        high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    return np.where(chroma > 1e-6, hue * 60.0, 0.0)


def label_colors(img: np.ndarray, background: np.ndarray, config: OracleConfig) -> np.ndarray:
    """Per-pixel palette index, or -1 for background and unreadable pixels."""
    high = img.max(axis=-1)
    chroma = high - img.min(axis=-1)
    saturation = chroma / np.maximum(high, 1e-3)
    distance = np.linalg.norm(img - background, axis=-1)
    foreground = (saturation >= config.min_saturation) & (chroma >= config.min_chroma)
    foreground &= distance >= config.min_bg_distance
    hue = hue_degrees(img)
    delta = np.abs(hue[..., None] - PALETTE_HUES[None, None, :])
    delta = np.minimum(delta, 360.0 - delta)
    nearest = delta.argmin(axis=-1)
    readable = foreground & (delta.min(axis=-1) <= config.max_hue_distance)
    return np.where(readable, nearest, -1)


TEMPLATE_BLURS: tuple[float, ...] = (0.0, 0.5, 0.8, 1.1)  # reference pixels
TEMPLATE_PAD = 4


@lru_cache(maxsize=8192)
def _template(shape: str, extent: int, frac_x: float, frac_y: float, blur: float) -> bytes:
    """Blurred coverage of a shape whose box starts at (PAD + frac) in a (extent + 2 PAD)^2 patch."""
    ss = SUPERSAMPLE
    side = extent + 2 * TEMPLATE_PAD
    canvas = Image.new("L", (side * ss, side * ss), 0)
    draw = ImageDraw.Draw(canvas)
    x0 = round((TEMPLATE_PAD + frac_x) * ss)
    y0 = round((TEMPLATE_PAD + frac_y) * ss)
    box = extent * ss
    outline = shape_polygon(shape)
    if outline is None:
        draw.ellipse([x0, y0, x0 + box - 1, y0 + box - 1], fill=255)
    else:
        draw.polygon([(x0 + u * (box - 1), y0 + v * (box - 1)) for u, v in outline], fill=255)
    arr = np.asarray(canvas, dtype=np.float32).reshape(side, ss, side, ss).mean(axis=(1, 3)) / 255.0
    if blur > 0:
        arr = ndimage.gaussian_filter(arr, blur)
    return arr.astype(np.float32).tobytes()


def shape_template(
    shape: str, extent: int, frac_x: float = 0.0, frac_y: float = 0.0, blur: float = 0.0
) -> np.ndarray:
    side = extent + 2 * TEMPLATE_PAD
    raw = _template(shape, extent, frac_x, frac_y, blur)
    return np.frombuffer(raw, dtype=np.float32).reshape(side, side)


@dataclass(frozen=True)
class ShapeFit:
    """Best template: shape, extent (image px), box corner (ix + fx, iy + fy) and blur (image px)."""

    shape: str
    extent: int
    ix: int
    iy: int
    fx: float
    fy: float
    blur: float
    errors: dict[str, float]

    @property
    def center(self) -> tuple[float, float]:
        return (self.ix + self.fx + self.extent / 2, self.iy + self.fy + self.extent / 2)


def _patch(image: np.ndarray, ix: int, iy: int, side: int, fill: float | np.ndarray) -> np.ndarray:
    """image[iy:iy+side, ix:ix+side] with out-of-bounds pixels set to `fill`."""
    height, width = image.shape[:2]
    out = np.empty((side, side) + image.shape[2:], dtype=np.float32)
    out[:] = fill
    y0, x0 = max(iy, 0), max(ix, 0)
    y1, x1 = min(iy + side, height), min(ix + side, width)
    if y1 > y0 and x1 > x0:
        out[y0 - iy : y1 - iy, x0 - ix : x1 - ix] = image[y0:y1, x0:x1]
    return out


def classify_shape(alpha: np.ndarray, mask: np.ndarray, scale: float) -> ShapeFit:
    """Best-fitting shape by squared error between the soft object coverage and blurred templates.

    The box measured on the half-coverage mask fixes the centre; the extent is searched from one pixel
    below to three above, because blur rounds corners off (a blurred diamond's half-coverage box shrinks).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    center_x = (cols[0] + cols[-1] + 1) / 2
    center_y = (rows[0] + rows[-1] + 1) / 2
    measured = int(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
    # Coverage outside a candidate's patch counts as error too, so patches of different sizes compare fairly.
    total = float((alpha**2).sum())
    errors: dict[str, float] = {}
    best: tuple[float, ShapeFit | None] = (np.inf, None)
    for shape in SHAPES:
        shape_best = np.inf
        for extent in range(max(3, measured - 1), measured + 4):
            left = center_x - extent / 2
            top = center_y - extent / 2
            ix, iy = int(np.floor(left)), int(np.floor(top))
            fx, fy = round((left - ix) * 2) / 2, round((top - iy) * 2) / 2
            side = extent + 2 * TEMPLATE_PAD
            patch = _patch(alpha, ix - TEMPLATE_PAD, iy - TEMPLATE_PAD, side, 0.0)
            outside = total - float((patch**2).sum())
            for blur in TEMPLATE_BLURS:
                template = shape_template(shape, extent, fx, fy, blur * scale)
                error = outside + float(((patch - template) ** 2).sum())
                shape_best = min(shape_best, error)
                if error < best[0]:
                    best = (error, ShapeFit(shape, extent, ix, iy, fx, fy, blur * scale, {}))
        errors[shape] = shape_best
    fit = best[1]
    assert fit is not None
    return ShapeFit(fit.shape, fit.extent, fit.ix, fit.iy, fit.fx, fit.fy, fit.blur, errors)


def texture_pattern(
    texture: str, xs: np.ndarray, ys: np.ndarray, center: tuple[float, float], scale: float
) -> np.ndarray:
    """Dark-shade map [len(ys), len(xs)] of a texture centred at `center`; xs, ys are pixel centres."""
    half = TEXTURE_PERIOD // 2
    dark_u = np.floor((xs - center[0]) / scale + 1).astype(int) % TEXTURE_PERIOD < half
    dark_v = np.floor((ys - center[1]) / scale + 1).astype(int) % TEXTURE_PERIOD < half
    if texture == "solid":
        return np.zeros((len(ys), len(xs)), dtype=np.float32)
    if texture == "striped":
        return np.broadcast_to(dark_v[:, None], (len(ys), len(xs))).astype(np.float32)
    if texture == "dotted":
        return (dark_v[:, None] & dark_u[None, :]).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}")


def classify_texture(
    balanced: np.ndarray,
    weight: np.ndarray,
    fit: ShapeFit,
    color: np.ndarray,
    background: np.ndarray,
    scale: float,
) -> tuple[str, dict[str, float]]:
    """Analysis by synthesis: redraw the fitted object with each texture and keep the closest.

    Each candidate is composited over the background with the fitted coverage, blurred at every template
    blur, and compared with the image on the pixels that belong to no other object (`weight`). Modelling the
    soft edge matters: on an 8 px triangle most texture evidence sits in partly covered pixels.
    """
    side = fit.extent + 2 * TEMPLATE_PAD
    x0, y0 = fit.ix - TEMPLATE_PAD, fit.iy - TEMPLATE_PAD
    observed = _patch(balanced, x0, y0, side, background)
    weights = _patch(weight, x0, y0, side, 0.0)[..., None]
    coverage = shape_template(fit.shape, fit.extent, fit.fx, fit.fy, 0.0)[..., None]
    xs = x0 + np.arange(side) + 0.5
    ys = y0 + np.arange(side) + 0.5
    residuals: dict[str, float] = {}
    for texture in TEXTURES:
        best = np.inf
        # The pattern's phase follows the object's centre, known to half a pixel only.
        shifts = (0.0,) if texture == "solid" else (-0.5 * scale, 0.0, 0.5 * scale)
        for dx in shifts:
            for dy in shifts:
                center = (fit.center[0] + dx, fit.center[1] + dy)
                dark = texture_pattern(texture, xs, ys, center, scale)[..., None]
                paint = color * (1.0 - (1.0 - DARK_FACTOR) * dark)
                drawn = coverage * paint + (1.0 - coverage) * background
                for blur in TEMPLATE_BLURS:
                    sigma = (blur * scale, blur * scale, 0)
                    predicted = ndimage.gaussian_filter(drawn, sigma) if blur > 0 else drawn
                    best = min(best, float((weights * (observed - predicted) ** 2).sum()))
        residuals[texture] = best
    return min(residuals, key=residuals.__getitem__), residuals


def _seeds(labels: np.ndarray, scale: float, config: OracleConfig) -> list[tuple[str, np.ndarray]]:
    """Connected same-colour regions with a solid core: one per object."""
    seeds = []
    for color_index, color in enumerate(PALETTE_NAMES):
        components, count = ndimage.label(labels == color_index, structure=EIGHT)
        for component_id in range(1, count + 1):
            component = components == component_id
            if component.sum() < config.min_area * scale**2:
                continue
            core = ndimage.binary_erosion(component, structure=EIGHT)
            if core.sum() < config.min_core * scale**2:
                continue  # a blended seam between two colours or a noise speck, not an object
            seeds.append((color, component))
    return seeds


def soft_coverage(pixels: np.ndarray, own: list[np.ndarray], surrounds: list[np.ndarray]) -> np.ndarray:
    """Per-pixel coverage of an object, explaining each pixel as a mix of one of its shades and one
    surrounding colour (background or a neighbouring object); the best-fitting pair gives the coverage.

    This keeps blended seams between two objects from being counted as solid parts of either.
    """
    best_alpha = np.zeros(pixels.shape[0], dtype=np.float32)
    best_residual = np.full(pixels.shape[0], np.inf, dtype=np.float32)
    for shade in own:
        for surround in surrounds:
            axis = shade - surround
            norm = float(axis @ axis)
            if norm < 1e-6:
                continue
            alpha = np.clip((pixels - surround) @ axis / norm, 0.0, 1.0)
            residual = np.linalg.norm(pixels - (surround + alpha[:, None] * axis), axis=-1)
            better = residual < best_residual
            best_alpha = np.where(better, alpha, best_alpha)
            best_residual = np.where(better, residual, best_residual)
    return best_alpha


def detect_objects(image: Any, config: OracleConfig = DEFAULT_CONFIG) -> list[SeenObject]:
    img = as_float_image(image)
    size = img.shape[0]
    scale = size / REFERENCE_CANVAS
    balanced, background = white_balance(img)
    labels = label_colors(balanced, background, config)
    seeds = _seeds(labels, scale, config)
    filled_seeds = [ndimage.binary_fill_holes(component) for _, component in seeds]
    # Palette colours, not colours measured on the object: a blurred 8 px object has no pure pixel left,
    # and white balancing by the background already undoes a colour cast.
    lights = [PALETTE_RGB[color] for color, _ in seeds]
    claimed = np.zeros(labels.shape, dtype=int)
    for index, (_, component) in enumerate(seeds):
        claimed[component] = index + 1
    found = []
    for index, (color, component) in enumerate(seeds):
        others = [j for j in range(len(seeds)) if j != index]
        # An object lying within another one's outline is seen against that container, not the background.
        containers = [j for j in others if (filled_seeds[j] & component).sum() >= 0.9 * component.sum()]
        surround = lights[containers[0]] if containers else background
        near = ndimage.binary_dilation(
            filled_seeds[index], structure=EIGHT, iterations=max(1, round(2 * scale))
        )
        alpha = np.zeros(labels.shape, dtype=np.float32)
        # Stripes and dots blur into any mix of an object's light and dark shade.
        levels = np.linspace(DARK_FACTOR, 1.0, 5)
        shades = [lights[index] * level for level in levels]
        neighbours = [background] + [lights[j] * level for j in others for level in levels]
        alpha[near] = soft_coverage(balanced[near], shades, neighbours)
        # Pixels a side-by-side neighbour claims are its own. A container's claimed pixels are not zeroed:
        # they surround the whole object, so blurred tips and corners would be cut off.
        for j in others:
            if j not in containers:
                alpha[seeds[j][1]] = 0.0
        alpha[filled_seeds[index] & ~component] = 1.0  # whatever it encloses (a contained object)
        half, _ = ndimage.label(alpha >= 0.5, structure=EIGHT)
        keep = np.unique(half[filled_seeds[index]])
        mask = np.isin(half, keep[keep > 0]) | filled_seeds[index]
        fit = classify_shape(alpha, mask, scale)
        # Texture evidence ignores other objects and the seams blended with them.
        foreign = ndimage.binary_dilation((claimed > 0) & (claimed != index + 1), structure=EIGHT)
        weight = (~foreign | component).astype(np.float32)
        texture, _ = classify_texture(balanced, weight, fit, lights[index], surround, scale)
        center = (fit.center[0] / scale, fit.center[1] / scale)
        size_word = "big" if fit.extent / scale > SIZE_SPLIT_PX else "small"
        found.append(SeenObject(fit.shape, color, texture, size_word, center, mask))
    return found


def _spec(prompt: str | PromptSpec) -> PromptSpec:
    return prompt if isinstance(prompt, PromptSpec) else parse_prompt(prompt)


def oracle_report(
    prompt: str | PromptSpec, image: Any, config: OracleConfig = DEFAULT_CONFIG
) -> dict[str, Any]:
    """Everything the oracle read: detected objects, fact verdicts, extras and the score."""
    spec = _spec(prompt)
    seen = detect_objects(image, config)
    size = as_float_image(image).shape[0]
    touch_px = max(1, round(config.touch_px * size / REFERENCE_CANVAS))
    facts = prompt_facts(spec, seen, touch_px=touch_px)
    extra = count_extra(spec, seen)
    return {
        "objects": seen,
        "facts": facts,
        "n_extra": extra,
        "score": score_from_facts(spec, facts, extra),
    }


def oracle_facts(
    prompt: str | PromptSpec, image: Any, config: OracleConfig = DEFAULT_CONFIG
) -> dict[str, bool]:
    return oracle_report(prompt, image, config)["facts"]


def oracle_score(prompt: str | PromptSpec, image: Any, config: OracleConfig = DEFAULT_CONFIG) -> float:
    """Compositional correctness of an image for a prompt, in [0, 1]."""
    return float(oracle_report(prompt, image, config)["score"])
