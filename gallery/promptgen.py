"""Prompt generator for the real-world gallery models: templates × vocabularies, per category, deduplicated.

Django-free and deterministic (same kind, count and seed → same prompts). The synthetic world under
``training/ml/world/`` has its own grammar; these prompts are for FLUX, SDXL and the other real models.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

COLORS = (
    "red", "blue", "green", "yellow", "black", "white", "pink", "purple", "orange", "brown", "gray", "gold",
)  # fmt: skip
SHAPES = (
    "round", "square", "triangular", "rectangular", "oval", "cubic", "spherical", "cylindrical",
    "heart-shaped", "star-shaped", "circular", "pyramidal",
)  # fmt: skip
TEXTURES = (
    "wooden", "metallic", "plastic", "glass", "leather", "fluffy", "rubber", "fabric", "stone", "ceramic",
    "velvet", "paper",
)  # fmt: skip
# Everyday objects that can plausibly take any colour, shape or texture above.
OBJECTS = (
    "bench", "car", "cup", "book", "chair", "vase", "lamp", "clock", "bowl", "bag", "hat", "box", "table",
    "bottle", "pillow", "umbrella", "teapot", "backpack", "suitcase", "plate", "mirror", "candle", "kite",
    "ball", "bicycle",
)  # fmt: skip
SPATIAL_OBJECTS = OBJECTS + (
    "dog", "cat", "horse", "bird", "cow", "sheep", "man", "woman", "girl", "boy", "tree", "flower",
)  # fmt: skip
SPATIAL_RELATIONS = (
    "on the left of", "on the right of", "on top of", "on the bottom of", "next to", "near", "above",
    "below", "in front of", "behind",
)  # fmt: skip
PEOPLE = (
    "man", "woman", "girl", "boy", "child", "old man", "old woman", "young man", "young woman", "chef",
    "farmer", "student",
)  # fmt: skip
ADULTS = ("man", "woman", "old man", "old woman", "young man", "young woman", "chef", "farmer")
ANIMALS = ("dog", "cat", "puppy", "kitten")
# (subjects, verb, objects the verb makes sense with)
NON_SPATIAL_ACTIONS = (
    (PEOPLE, "holding", ("umbrella", "book", "cup", "kite", "bag", "lamp", "flower", "balloon")),
    (PEOPLE, "riding", ("bicycle", "horse", "skateboard", "motorcycle", "scooter")),
    (PEOPLE, "wearing", ("hat", "backpack", "scarf", "jacket", "helmet")),
    (PEOPLE, "reading", ("book", "newspaper", "letter", "map")),
    (ANIMALS + ("child",), "chasing", ("ball", "bird", "butterfly", "kite")),
    (PEOPLE, "feeding", ("dog", "cat", "horse", "bird", "sheep", "goat")),
    (PEOPLE, "hugging", ("dog", "cat", "tree", "pillow", "teddy bear")),
    (ANIMALS + ("bird",), "sitting on", ("chair", "table", "bench", "suitcase", "sofa")),
    (PEOPLE, "painting", ("vase", "wall", "bench", "boat", "fence")),
    (PEOPLE, "looking at", ("clock", "mirror", "painting", "flower", "map")),
    (PEOPLE, "carrying", ("suitcase", "box", "chair", "basket", "ladder")),
    (ADULTS, "pushing", ("cart", "stroller", "wheelbarrow", "bicycle")),
    (PEOPLE, "playing with", ("dog", "cat", "ball", "kite", "puppy")),
    (ADULTS, "cooking", ("pot of soup", "pancake", "steak", "pizza", "omelette")),
    (("horse", "cow", "sheep", "goat"), "eating", ("bunch of grass", "bale of hay", "apple", "carrot")),
)

KINDS = ("color", "shape", "texture", "spatial", "non_spatial")


def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _np(*words: str) -> str:
    """Noun phrase with its article: ("orange", "car") → "an orange car"."""
    phrase = " ".join(words)
    return f"{article(phrase)} {phrase}"


def _attribute_pairs(attributes: tuple[str, ...], joiner: str) -> Iterator[str]:
    # Two different attributes on two different objects, the binding the category tests.
    for a1, a2 in itertools.permutations(attributes, 2):
        for o1, o2 in itertools.permutations(OBJECTS, 2):
            yield f"{_np(a1, o1)} {joiner} {_np(a2, o2)}"


def _spatial() -> Iterator[str]:
    for o1, o2 in itertools.permutations(SPATIAL_OBJECTS, 2):
        for relation in SPATIAL_RELATIONS:
            yield f"{_np(o1)} {relation} {_np(o2)}"


def _non_spatial() -> Iterator[str]:
    for subjects, verb, objects in NON_SPATIAL_ACTIONS:
        for subject in subjects:
            for obj in objects:
                if obj != subject:
                    yield f"{_np(subject)} {verb} {_np(obj)}"


def _candidates(kind: str) -> Iterator[str]:
    if kind == "color":
        yield from _attribute_pairs(COLORS, "and")
        yield from _attribute_pairs(COLORS, "with")
    elif kind == "shape":
        yield from _attribute_pairs(SHAPES, "and")
    elif kind == "texture":
        yield from _attribute_pairs(TEXTURES, "and")
    elif kind == "spatial":
        yield from _spatial()
    elif kind == "non_spatial":
        yield from _non_spatial()
    else:
        raise ValueError(f"no prompt templates for {kind!r}; known: {', '.join(KINDS)}")


def capacity(kind: str) -> int:
    """How many distinct prompts the templates can make for ``kind``."""
    return len(_all(kind))


def _all(kind: str) -> list[str]:
    # Case-insensitive dedupe: prompt splits hash the lower-cased text, so case variants are one prompt.
    unique: dict[str, str] = {}
    for text in _candidates(kind):
        unique.setdefault(text.lower(), text)
    return list(unique.values())


def generate_prompts(kind: str, count: int, *, seed: int = 0) -> list[str]:
    """``count`` distinct prompts of ``kind`` drawn without replacement (deterministic for a seed)."""
    if count < 0:
        raise ValueError("count must be non-negative")
    pool = _all(kind)
    if count > len(pool):
        raise ValueError(f"the {kind} templates make only {len(pool)} distinct prompts, asked for {count}")
    rng = random.Random(f"{kind}:{seed}")
    return rng.sample(pool, count)
