"""The closed vocabulary of the synthetic compositional world.

Everything that can appear in a prompt or in a scene is listed here, so the grammar, the renderer, the
oracle and the tokenizer agree on one source of truth.
"""

from __future__ import annotations

SUBCATEGORIES: tuple[str, ...] = ("color", "shape", "texture", "spatial", "non_spatial")

# IterComp trains one reward model per category; the three attribute-binding subcategories share one.
REWARD_CATEGORY: dict[str, str] = {
    "color": "attribute_binding",
    "shape": "attribute_binding",
    "texture": "attribute_binding",
    "spatial": "spatial",
    "non_spatial": "non_spatial",
}
REWARD_CATEGORIES: tuple[str, ...] = ("attribute_binding", "spatial", "non_spatial")

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

# Saturated colours whose hues are far apart, so that both the light and the dark (texture) shade keep
# their hue after blur, noise and a colour cast.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (235, 195, 25),
    "green": (35, 170, 55),
    "blue": (40, 90, 225),
    "purple": (160, 55, 210),
}
# Dark shade used for stripes and dots: same hue, lower value.
DARK_FACTOR = 0.5

TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted")

# "shape" subcategory prompts bind a size word to a shape (T2I-CompBench's shape category is about
# big/small/round... attributes of the named object).
SIZES: tuple[str, ...] = ("small", "big")
# Object extents in pixels on the reference 32 px canvas.
SIZE_PX: dict[str, int] = {"small": 8, "big": 12}
# Extents used by the "inside" relation: the container must leave room for a small object.
INSIDE_OUTER_PX = 24
INSIDE_INNER_PX = 8
# Size class boundary (reference canvas): anything wider than this is "big".
SIZE_SPLIT_PX = 10.0

SPATIAL_RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NON_SPATIAL_RELATIONS: tuple[str, ...] = ("inside", "touching")
RELATIONS: tuple[str, ...] = SPATIAL_RELATIONS + NON_SPATIAL_RELATIONS
RELATION_PHRASE: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
    "inside": "inside",
    "touching": "touching",
}

REFERENCE_CANVAS = 32
BACKGROUND: tuple[int, int, int] = (235, 235, 235)


def relation_category(relation: str | None) -> str | None:
    if relation is None:
        return None
    if relation in SPATIAL_RELATIONS:
        return "spatial"
    if relation in NON_SPATIAL_RELATIONS:
        return "non_spatial"
    raise ValueError(f"unknown relation {relation!r}")


def grammar_words() -> list[str]:
    """Every word the prompt grammar can emit, in a stable order (the tokenizer vocabulary)."""
    words: list[str] = ["a", "and"]
    words += list(SIZES) + list(COLORS) + list(TEXTURES) + list(SHAPES)
    for relation in RELATIONS:
        for word in RELATION_PHRASE[relation].split():
            if word not in words:
                words.append(word)
    return words
