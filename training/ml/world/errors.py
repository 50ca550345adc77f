"""Deliberate composition errors: the ways a text-to-image model gets a prompt wrong.

A scene is planned as (objects, relation) from the prompt and then edited by error operators before layout.
Gallery generators apply them with model-specific probabilities; the oracle benchmark applies them on
purpose to measure how well the oracle notices each kind of mistake.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .grammar import PromptSpec
from .layout import LayoutError, ObjectPlan, Relation, make_scene, place, resolve_plans
from .scene import Scene
from .vocab import COLORS, SHAPES, SIZE_PX, SIZES, TEXTURES

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

ATTRIBUTE_ERRORS = (
    "swap_color",
    "random_color",
    "swap_texture",
    "random_texture",
    "swap_size",
    "random_size",
)
OBJECT_ERRORS = ("wrong_shape", "drop", "extra")
RELATION_ERRORS = ("reverse", "random_layout")
ERRORS = ATTRIBUTE_ERRORS + OBJECT_ERRORS + RELATION_ERRORS

# Which deliberate errors are informative for each subcategory (an error on an attribute the prompt does
# not state changes no fact, so it would not test the oracle).
ERRORS_FOR: dict[str, tuple[str, ...]] = {
    "color": ("swap_color", "random_color") + OBJECT_ERRORS,
    "shape": ("swap_size", "random_size") + OBJECT_ERRORS,
    "texture": ("swap_texture", "random_texture") + OBJECT_ERRORS,
    "spatial": ("swap_color", "random_color", "swap_texture", "random_texture")
    + OBJECT_ERRORS
    + RELATION_ERRORS,
    "non_spatial": ("swap_color", "random_color", "swap_texture", "random_texture")
    + OBJECT_ERRORS
    + RELATION_ERRORS,
}


def _other(values: tuple[str, ...] | list[str], exclude: set[str], rng: np.random.Generator) -> str:
    choices = [v for v in values if v not in exclude]
    return str(choices[int(rng.integers(len(choices)))])


def _size_word(extent: int) -> str:
    return "big" if extent >= SIZE_PX["big"] else "small"


def apply_error(
    plans: list[ObjectPlan], relation: Relation | None, error: str, rng: np.random.Generator
) -> tuple[list[ObjectPlan], Relation | None]:
    """One error operator; returns edited copies (plans keep prompt order until an object is dropped)."""
    plans = list(plans)
    target = int(rng.integers(len(plans)))
    if error.startswith("swap_") and len(plans) >= 2:
        field = {"swap_color": "color", "swap_texture": "texture", "swap_size": "extent"}[error]
        first, second = getattr(plans[0], field), getattr(plans[1], field)
        plans[0], plans[1] = replace(plans[0], **{field: second}), replace(plans[1], **{field: first})
    elif error == "random_color":
        used = {plan.color for plan in plans}
        plans[target] = replace(plans[target], color=_other(list(COLORS), used, rng))
    elif error == "random_texture":
        plans[target] = replace(plans[target], texture=_other(TEXTURES, {plans[target].texture}, rng))
    elif error == "random_size":
        new_size = _other(SIZES, {_size_word(plans[target].extent)}, rng)
        plans[target] = replace(plans[target], extent=SIZE_PX[new_size])
    elif error == "wrong_shape":
        used = {plan.shape for plan in plans}
        plans[target] = replace(plans[target], shape=_other(SHAPES, used, rng))
    elif error == "drop" and len(plans) >= 2:
        del plans[target]
        relation = None
    elif error == "extra":
        used = {plan.color for plan in plans}
        plans.append(
            ObjectPlan(
                _other(SHAPES, set(), rng),
                _other(list(COLORS), used, rng),
                _other(TEXTURES, set(), rng),
                SIZE_PX["small"],
            )
        )
    elif error == "reverse" and relation is not None:
        subject, rel, other = relation
        if rel in OPPOSITE:
            relation = (subject, OPPOSITE[rel], other)
        elif rel == "inside":
            relation = (other, "inside", subject)
        else:
            relation = None  # the opposite of touching is being apart
    elif error == "random_layout":
        relation = None
    return plans, relation


def planned_scene(
    spec: PromptSpec,
    rng: np.random.Generator,
    errors: list[str] | tuple[str, ...] = (),
    plans: list[ObjectPlan] | None = None,
) -> Scene:
    """A scene for `spec` after applying `errors` in order; an unplaceable extra object is left out."""
    plans = resolve_plans(spec, rng) if plans is None else plans
    relation: Relation | None = (0, spec.relation, 1) if spec.relation is not None else None
    for error in errors:
        plans, relation = apply_error(plans, relation, error, rng)
    try:
        objects = place(plans, relation, rng)
    except LayoutError:
        if len(plans) <= 2:
            raise
        plans = plans[:2]
        objects = place(plans, relation, rng)
        errors = tuple(e for e in errors if e != "extra")
    return make_scene(objects, notes=tuple(errors))
