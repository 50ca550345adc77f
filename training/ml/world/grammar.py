"""Prompt grammar: generate and parse the five IterComp subcategories of this world.

Every prompt names exactly two objects with distinct shapes (the shape word is the noun, like "elephant"
in T2I-CompBench), so a prompt object is identified by its shape everywhere downstream.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass

import numpy as np

from .vocab import (
    COLORS,
    NON_SPATIAL_RELATIONS,
    RELATION_PHRASE,
    REWARD_CATEGORY,
    SHAPES,
    SIZES,
    SPATIAL_RELATIONS,
    SUBCATEGORIES,
    TEXTURES,
)


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str | None = None
    texture: str | None = None
    size: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.color is not None and self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}")
        if self.texture is not None and self.texture not in TEXTURES:
            raise ValueError(f"unknown texture {self.texture!r}")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")

    def attributes(self) -> dict[str, str]:
        """The attributes the prompt states for this object (unstated ones are free)."""
        found = {"color": self.color, "texture": self.texture, "size": self.size}
        return {key: value for key, value in found.items() if value is not None}

    def phrase(self) -> str:
        words = ["a"]
        if self.size is not None:
            words.append(self.size)
        if self.color is not None:
            words.append(self.color)
        if self.texture is not None:
            words.append(self.texture)
        words.append(self.shape)
        return " ".join(words)


@dataclass(frozen=True)
class PromptSpec:
    """A parsed prompt: two objects and, for relation prompts, `objects[0] <relation> objects[1]`."""

    subcategory: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    def __post_init__(self) -> None:
        if self.subcategory not in SUBCATEGORIES:
            raise ValueError(f"unknown subcategory {self.subcategory!r}")
        if len(self.objects) != 2:
            raise ValueError("a prompt names exactly two objects")
        if self.objects[0].shape == self.objects[1].shape:
            raise ValueError("the two objects of a prompt must have distinct shapes")
        expected = {"spatial": SPATIAL_RELATIONS, "non_spatial": NON_SPATIAL_RELATIONS}.get(self.subcategory)
        if expected is None and self.relation is not None:
            raise ValueError(f"{self.subcategory} prompts have no relation")
        if expected is not None and self.relation not in expected:
            raise ValueError(f"{self.subcategory} prompts need a relation from {expected}")

    @property
    def category(self) -> str:
        return REWARD_CATEGORY[self.subcategory]

    @property
    def text(self) -> str:
        first, second = (obj.phrase() for obj in self.objects)
        if self.relation is None:
            return f"{first} and {second}"
        return f"{first} {RELATION_PHRASE[self.relation]} {second}"


def _binding_specs(subcategory: str) -> list[PromptSpec]:
    attribute_values = {"color": tuple(COLORS), "shape": SIZES, "texture": TEXTURES}[subcategory]
    field = {"color": "color", "shape": "size", "texture": "texture"}[subcategory]
    specs = []
    for shape_a, shape_b in itertools.permutations(SHAPES, 2):
        for value_a, value_b in itertools.product(attribute_values, repeat=2):
            # Binding is only tested when the two values differ, except for sizes where "two big
            # objects" is still a meaningful size constraint.
            if field != "size" and value_a == value_b:
                continue
            objects = (ObjectSpec(shape_a, **{field: value_a}), ObjectSpec(shape_b, **{field: value_b}))
            specs.append(PromptSpec(subcategory, objects))
    return specs


def _relation_specs(subcategory: str) -> list[PromptSpec]:
    relations = SPATIAL_RELATIONS if subcategory == "spatial" else NON_SPATIAL_RELATIONS
    # Each object carries at most one stated attribute (a colour or a texture), or none.
    modifiers: list[dict[str, str]] = [{}]
    modifiers += [{"color": color} for color in COLORS]
    modifiers += [{"texture": texture} for texture in TEXTURES]
    specs = []
    for shape_a, shape_b in itertools.permutations(SHAPES, 2):
        for relation in relations:
            for mod_a, mod_b in itertools.product(modifiers, repeat=2):
                if "color" in mod_a and mod_a == mod_b:
                    continue  # scenes never repeat a colour, so such a prompt could not be satisfied
                objects = (ObjectSpec(shape_a, **mod_a), ObjectSpec(shape_b, **mod_b))
                specs.append(PromptSpec(subcategory, objects, relation))
    return specs


def all_prompt_specs(subcategory: str) -> list[PromptSpec]:
    """Every prompt of a subcategory in a stable order."""
    if subcategory not in SUBCATEGORIES:
        raise ValueError(f"unknown subcategory {subcategory!r}")
    if subcategory in ("spatial", "non_spatial"):
        return _relation_specs(subcategory)
    return _binding_specs(subcategory)


def all_prompts(subcategory: str) -> list[str]:
    return [spec.text for spec in all_prompt_specs(subcategory)]


def generate_prompts(subcategory: str, n: int, seed: int) -> list[str]:
    """`n` distinct prompts of a subcategory drawn without replacement (all of them if fewer exist)."""
    if n < 0:
        raise ValueError("n must be non-negative")
    prompts = all_prompts(subcategory)
    rng = np.random.default_rng([seed, zlib.crc32(subcategory.encode())])
    order = rng.permutation(len(prompts))[: min(n, len(prompts))]
    return [prompts[i] for i in order]


def is_held_out(prompt: str) -> bool:
    """A fixed ~12% of prompts never seen in base-model pretraining (stable across runs and machines)."""
    return zlib.crc32(prompt.encode()) % 8 == 0


_RELATION_BY_PHRASE = {phrase: relation for relation, phrase in RELATION_PHRASE.items()}


def _parse_object(words: list[str], text: str) -> ObjectSpec:
    if len(words) < 2 or words[0] != "a":
        raise ValueError(f"cannot parse object phrase {' '.join(words)!r} in {text!r}")
    *modifiers, shape = words[1:]
    fields: dict[str, str] = {}
    for word in modifiers:
        if word in SIZES:
            key = "size"
        elif word in COLORS:
            key = "color"
        elif word in TEXTURES:
            key = "texture"
        else:
            raise ValueError(f"unknown word {word!r} in {text!r}")
        if key in fields:
            raise ValueError(f"two {key} words for one object in {text!r}")
        fields[key] = word
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} in {text!r}")
    return ObjectSpec(shape, **fields)


def parse_prompt(text: str) -> PromptSpec:
    """Parse a prompt of this world's grammar; the subcategory is inferred from what it states."""
    words = text.strip().lower().rstrip(".").split()
    relation = None
    split_at = split_len = None
    for phrase, rel in sorted(_RELATION_BY_PHRASE.items(), key=lambda item: -len(item[0])):
        phrase_words = phrase.split()
        for start in range(1, len(words)):
            if words[start : start + len(phrase_words)] == phrase_words:
                relation, split_at, split_len = rel, start, len(phrase_words)
                break
        if relation is not None:
            break
    if relation is None:
        if "and" not in words:
            raise ValueError(f"no relation or 'and' in {text!r}")
        split_at, split_len = words.index("and"), 1
    assert split_at is not None and split_len is not None
    first = _parse_object(words[:split_at], text)
    second = _parse_object(words[split_at + split_len :], text)
    if relation is not None:
        subcategory = "spatial" if relation in SPATIAL_RELATIONS else "non_spatial"
    else:
        stated = set(first.attributes()) | set(second.attributes())
        if len(stated) != 1:
            raise ValueError(f"an attribute-binding prompt states exactly one kind of attribute: {text!r}")
        subcategory = {"color": "color", "size": "shape", "texture": "texture"}[stated.pop()]
    return PromptSpec(subcategory, (first, second), relation)
