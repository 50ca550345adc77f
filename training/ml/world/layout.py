"""Turning a prompt (or a deliberately wrong version of it) into a concrete scene.

World rules that keep every fact well defined on a 32 px canvas:
- colours within a scene are distinct (so objects never merge in colour space);
- unrelated objects keep a gap of at least MIN_GAP px along some axis (nothing "almost touches");
- for every pair, the horizontal and vertical centre offsets differ by at least AXIS_CLEARANCE px, so
  "left of" versus "above" is never a coin flip.
Only the pair named by an "inside" or "touching" relation is exempt from the gap rule.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from .grammar import PromptSpec, parse_prompt
from .scene import Scene, SceneObject, object_coverage, render_scene
from .vocab import (
    COLORS,
    INSIDE_INNER_PX,
    INSIDE_OUTER_PX,
    REFERENCE_CANVAS,
    SIZE_PX,
    SIZES,
    TEXTURES,
)

MARGIN = 1
MIN_GAP = 5
AXIS_CLEARANCE = 3
MAX_TRIES = 400

Relation = tuple[int, str, int]  # (subject index, relation, object index)


@dataclass(frozen=True)
class ObjectPlan:
    shape: str
    color: str
    texture: str
    extent: int


class LayoutError(RuntimeError):
    """No placement satisfying the world rules was found (callers drop an optional object and retry)."""


def resolve_plans(spec: PromptSpec, rng: np.random.Generator) -> list[ObjectPlan]:
    """Objects with every stated attribute honoured and the unstated ones drawn at random."""
    stated_colors = {obj.color for obj in spec.objects if obj.color is not None}
    free_colors = [c for c in COLORS if c not in stated_colors]
    plans = []
    for obj in spec.objects:
        if obj.color is not None:
            color = obj.color
        else:
            color = free_colors.pop(int(rng.integers(len(free_colors))))
        texture = obj.texture if obj.texture is not None else str(rng.choice(TEXTURES))
        size = obj.size if obj.size is not None else str(rng.choice(SIZES))
        plans.append(ObjectPlan(obj.shape, color, texture, SIZE_PX[size]))
    return plans


def spatial_holds(a_center: tuple[float, float], b_center: tuple[float, float], relation: str) -> bool:
    """Does `a <relation> b` hold between two centres (image y grows downwards)?"""
    dx = b_center[0] - a_center[0]
    dy = b_center[1] - a_center[1]
    horizontal = abs(dx) > abs(dy)
    if relation == "left of":
        return horizontal and dx > 0
    if relation == "right of":
        return horizontal and dx < 0
    if relation == "above":
        return not horizontal and dy > 0
    if relation == "below":
        return not horizontal and dy < 0
    raise ValueError(f"not a spatial relation: {relation!r}")


def _in_canvas(obj: SceneObject, canvas: int) -> bool:
    return (
        obj.left >= MARGIN
        and obj.top >= MARGIN
        and obj.left + obj.extent <= canvas - MARGIN
        and (obj.top + obj.extent <= canvas - MARGIN)
    )


def _mask(obj: SceneObject, canvas: int) -> np.ndarray:
    return object_coverage(obj, canvas) >= 0.5


def _touch_position(
    anchor: SceneObject, mover: SceneObject, rng: np.random.Generator, canvas: int
) -> SceneObject | None:
    """Slide `mover` towards `anchor` from one side until their masks are 8-adjacent."""
    direction = int(rng.integers(4))  # 0: right of anchor, 1: left, 2: below, 3: above
    ax, ay = anchor.center
    offset = int(rng.integers(-2, 3))
    if direction in (0, 1):
        top = round(ay - mover.extent / 2) + offset
        start = anchor.left + anchor.extent if direction == 0 else anchor.left - mover.extent
        step = -1 if direction == 0 else 1
        candidates = [mover.moved(start + k * step, top) for k in range(mover.extent + anchor.extent)]
    else:
        left = round(ax - mover.extent / 2) + offset
        start = anchor.top + anchor.extent if direction == 2 else anchor.top - mover.extent
        step = -1 if direction == 2 else 1
        candidates = [mover.moved(left, start + k * step) for k in range(mover.extent + anchor.extent)]
    grown = ndimage.binary_dilation(_mask(anchor, canvas), structure=np.ones((3, 3), bool))
    anchor_mask = _mask(anchor, canvas)
    for candidate in candidates:
        if not _in_canvas(candidate, canvas):
            return None
        mask = _mask(candidate, canvas)
        if (mask & anchor_mask).any():
            return None
        if (mask & grown).any():
            return candidate
    return None


def _inside_position(outer: SceneObject, inner_extent: int) -> tuple[int, int]:
    """Top-left of a small object centred on the container's incentre."""
    cx = outer.left + outer.extent / 2
    # An isosceles triangle with base = height has its incentre at ~0.69 of its height.
    cy = outer.top + (0.69 if outer.shape == "triangle" else 0.5) * outer.extent
    return round(cx - inner_extent / 2), round(cy - inner_extent / 2)


def _candidates(
    extent: int, placed: list[SceneObject], canvas: int, direction: tuple[SceneObject, str] | None
) -> np.ndarray:
    """All top-left corners [n, 2] that keep the world rules against `placed` objects.

    `direction=(other, relation)` additionally requires the new object to stand in that spatial relation
    to `other`.
    """
    positions = np.arange(MARGIN, canvas - MARGIN - extent + 1)
    left, top = np.meshgrid(positions, positions, indexing="xy")
    left, top = left.ravel(), top.ravel()
    ok = np.ones(left.shape, dtype=bool)
    cx, cy = left + extent / 2, top + extent / 2
    for obj in placed:
        gap_x = np.maximum(obj.left - (left + extent), left - (obj.left + obj.extent))
        gap_y = np.maximum(obj.top - (top + extent), top - (obj.top + obj.extent))
        ox, oy = obj.center
        dx, dy = ox - cx, oy - cy
        ok &= np.maximum(gap_x, gap_y) >= MIN_GAP
        ok &= np.abs(np.abs(dx) - np.abs(dy)) >= AXIS_CLEARANCE
    if direction is not None:
        other, relation = direction
        ox, oy = other.center
        dx, dy = ox - cx, oy - cy  # the new object is the subject: `new <relation> other`
        horizontal = np.abs(dx) > np.abs(dy)
        ok &= {
            "left of": horizontal & (dx > 0),
            "right of": horizontal & (dx < 0),
            "above": ~horizontal & (dy > 0),
            "below": ~horizontal & (dy < 0),
        }[relation]
    return np.stack([left[ok], top[ok]], axis=1)


def _draw_position(candidates: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    if len(candidates) == 0:
        return None
    left, top = candidates[int(rng.integers(len(candidates)))]
    return int(left), int(top)


def place(
    plans: list[ObjectPlan],
    relation: Relation | None,
    rng: np.random.Generator,
    canvas: int = REFERENCE_CANVAS,
) -> list[SceneObject]:
    """Positions for planned objects obeying the world rules and the (possibly wrong) relation.

    The related pair is placed first (its second object uniformly, its subject among the positions that
    satisfy the relation), then every other object uniformly among the positions still allowed.
    """
    plans = list(plans)
    if relation is not None and relation[1] == "inside":
        inner, _, outer = relation
        plans[outer] = replace(plans[outer], extent=INSIDE_OUTER_PX)
        plans[inner] = replace(plans[inner], extent=INSIDE_INNER_PX)
    order = list(range(len(plans)))
    if relation is not None:
        subject, _, other = relation
        order = [other, subject] + [i for i in order if i not in (subject, other)]

    def blank(index: int) -> SceneObject:
        plan = plans[index]
        return SceneObject(plan.shape, plan.color, plan.texture, plan.extent, 0, 0)

    for _ in range(MAX_TRIES):
        objects: dict[int, SceneObject] = {}
        for index in order:
            obj = blank(index)
            if relation is not None and index == relation[0] and relation[1] in ("inside", "touching"):
                anchor = objects[relation[2]]
                if relation[1] == "inside":
                    obj = obj.moved(*_inside_position(anchor, obj.extent))
                else:
                    moved = _touch_position(anchor, obj, rng, canvas)
                    if moved is None:
                        break
                    obj = moved
                objects[index] = obj
                continue
            # The exempt partner of an inside/touching pair is placed before its subject, so only the
            # remaining objects are constrained against both members of the pair.
            direction = None
            if relation is not None and index == relation[0]:
                direction = (objects[relation[2]], relation[1])
            position = _draw_position(_candidates(obj.extent, list(objects.values()), canvas, direction), rng)
            if position is None:
                break
            objects[index] = obj.moved(*position)
        else:
            return [objects[i] for i in range(len(plans))]
    raise LayoutError(f"no layout for {plans} with relation {relation}")


def sample_scene(spec: PromptSpec, rng: np.random.Generator) -> Scene:
    """A correct scene for a prompt: stated attributes and relation hold, nothing else is drawn."""
    plans = resolve_plans(spec, rng)
    relation = (0, spec.relation, 1) if spec.relation is not None else None
    return make_scene(place(plans, relation, rng))


def make_scene(objects: list[SceneObject], notes: tuple[str, ...] = ()) -> Scene:
    # Larger objects are drawn first so that a contained object stays visible on top of its container.
    ordered = sorted(objects, key=lambda obj: -obj.extent)
    return Scene(tuple(ordered), notes=notes)


def prompt_rng(text: str, seed: int, salt: str = "") -> np.random.Generator:
    """A generator fixed by (prompt, seed, salt), independent of call order and process."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(text.encode()), zlib.crc32(salt.encode())])


def correct_scene(text: str, seed: int) -> Scene:
    return sample_scene(parse_prompt(text), prompt_rng(text, seed, "render"))


def render_prompt(text: str, seed: int, size: int = REFERENCE_CANVAS) -> Image.Image:
    """A correct scene for the prompt, rendered at `size` px; the same (text, seed) gives the same image."""
    return render_scene(correct_scene(text, seed), size)
