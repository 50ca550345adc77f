"""Prompt facts and the compositional score, shared by the scene truth and the image oracle.

A prompt decomposes into facts: each named object is present, each stated attribute holds, the relation
holds, and nothing else is in the picture. The truth evaluates them on the scene's own geometry; the oracle
evaluates them on what it detects in pixels. Both use the same matching and scoring code, so the oracle's
accuracy is measured fact by fact against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .grammar import PromptSpec
from .layout import spatial_holds
from .scene import Scene, hard_masks
from .vocab import SPATIAL_RELATIONS

# Share of the score that the relation carries in relation prompts (the rest is objects and attributes).
RELATION_WEIGHT = 0.5
# Fraction of the contained object that must lie within the container's filled outline.
INSIDE_FRACTION = 0.9


@dataclass(frozen=True)
class SeenObject:
    """One object as found in a scene or in an image; centres are in reference-canvas pixels."""

    shape: str
    color: str
    texture: str
    size: str
    center: tuple[float, float]
    mask: np.ndarray  # filled outline at the resolution it was observed at


def scene_objects(scene: Scene) -> list[SeenObject]:
    """The ground truth: each object's attributes and its full (unoccluded) mask on the reference canvas."""
    masks = hard_masks(scene)
    return [
        SeenObject(obj.shape, obj.color, obj.texture, obj.size, obj.center, mask)
        for obj, mask in zip(scene.objects, masks, strict=True)
    ]


def match_objects(spec: PromptSpec, seen: list[SeenObject]) -> list[int | None]:
    """For each prompt object, the seen object with its shape that satisfies most stated attributes."""
    matches: list[int | None] = []
    for wanted in spec.objects:
        best, best_key = None, None
        for index, obj in enumerate(seen):
            if obj.shape != wanted.shape:
                continue
            satisfied = sum(getattr(obj, attr) == value for attr, value in wanted.attributes().items())
            key = (satisfied, int(obj.mask.sum()))
            if best_key is None or key > best_key:
                best, best_key = index, key
        matches.append(best)
    return matches


def is_inside(inner: SeenObject, outer: SeenObject) -> bool:
    inner_area = int(inner.mask.sum())
    if inner_area == 0 or inner_area >= int(outer.mask.sum()):
        return False
    return int((inner.mask & outer.mask).sum()) >= INSIDE_FRACTION * inner_area


def mask_distance(a: np.ndarray, b: np.ndarray, limit: int) -> int:
    """Chebyshev distance between two masks, capped at limit + 1 (0 means they overlap)."""
    if (a & b).any():
        return 0
    grown = a
    structure = np.ones((3, 3), dtype=bool)
    for step in range(1, limit + 1):
        grown = ndimage.binary_dilation(grown, structure=structure)
        if (grown & b).any():
            return step
    return limit + 1


def relation_holds(a: SeenObject, b: SeenObject, relation: str, touch_px: int) -> bool:
    if relation in SPATIAL_RELATIONS:
        return spatial_holds(a.center, b.center, relation)
    if relation == "inside":
        return is_inside(a, b)
    if relation == "touching":
        if is_inside(a, b) or is_inside(b, a):
            return False
        return mask_distance(a.mask, b.mask, touch_px) <= touch_px
    raise ValueError(f"unknown relation {relation!r}")


def prompt_facts(spec: PromptSpec, seen: list[SeenObject], touch_px: int = 1) -> dict[str, bool]:
    """Verdict on every fact of the prompt; keys like 'present:circle', 'color:circle', 'relation'."""
    matches = match_objects(spec, seen)
    facts: dict[str, bool] = {}
    for wanted, match in zip(spec.objects, matches, strict=True):
        facts[f"present:{wanted.shape}"] = match is not None
        for attr, value in wanted.attributes().items():
            facts[f"{attr}:{wanted.shape}"] = match is not None and getattr(seen[match], attr) == value
    if spec.relation is not None:
        first, second = matches
        facts["relation"] = (
            first is not None
            and second is not None
            and relation_holds(seen[first], seen[second], spec.relation, touch_px)
        )
    facts["no_extra"] = count_extra(spec, seen) == 0
    return facts


def count_extra(spec: PromptSpec, seen: list[SeenObject]) -> int:
    matched = {m for m in match_objects(spec, seen) if m is not None}
    return len(seen) - len(matched)


def score_from_facts(spec: PromptSpec, facts: dict[str, bool], n_extra: int) -> float:
    """Compositional score in [0, 1]: object/attribute facts, the relation, divided by 1 + extras.

    Extras divide the score because a model rewarded while ignoring them learns to add objects.
    """
    object_facts = [value for key, value in facts.items() if key not in ("relation", "no_extra")]
    object_part = float(np.mean(object_facts))
    if spec.relation is None:
        raw = object_part
    else:
        raw = (1 - RELATION_WEIGHT) * object_part + RELATION_WEIGHT * float(facts["relation"])
    return raw / (1 + n_extra)


def truth_facts(spec: PromptSpec, scene: Scene) -> dict[str, bool]:
    return prompt_facts(spec, scene_objects(scene), touch_px=1)


def truth_score(spec: PromptSpec, scene: Scene) -> float:
    seen = scene_objects(scene)
    return score_from_facts(spec, prompt_facts(spec, seen, touch_px=1), count_extra(spec, seen))
