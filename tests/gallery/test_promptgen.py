"""Template prompt generator for the real-world gallery models."""

from __future__ import annotations

import re

import pytest
from django.core.management import call_command

from gallery.models import Prompt
from gallery.promptgen import COLORS, KINDS, SPATIAL_RELATIONS, capacity, generate_prompts


@pytest.mark.parametrize("kind", KINDS)
def test_generated_prompts_are_distinct_deterministic_and_seed_dependent(kind):
    first = generate_prompts(kind, 150, seed=1)
    assert len(first) == len({p.lower() for p in first}) == 150
    assert generate_prompts(kind, 150, seed=1) == first
    assert generate_prompts(kind, 150, seed=2) != first


def test_colour_prompts_bind_two_different_colours_to_two_different_objects():
    pattern = re.compile(r"^an? (\w+) (\w+) (?:and|with) an? (\w+) (\w+)$")
    for prompt in generate_prompts("color", 300):
        c1, o1, c2, o2 = pattern.match(prompt).groups()
        assert c1 in COLORS and c2 in COLORS and c1 != c2 and o1 != o2
        assert prompt.startswith("an ") == c1.startswith(("a", "e", "i", "o", "u"))


def test_spatial_prompts_name_a_relation_between_two_objects():
    for prompt in generate_prompts("spatial", 200):
        assert any(f" {relation} " in prompt for relation in SPATIAL_RELATIONS)


def test_asking_for_more_than_the_templates_make_is_an_error():
    with pytest.raises(ValueError, match="only"):
        generate_prompts("non_spatial", capacity("non_spatial") + 1)
    assert len(set(generate_prompts("non_spatial", capacity("non_spatial")))) == capacity("non_spatial")


@pytest.mark.django_db
def test_generate_command_imports_prompts_into_the_kinds_category():
    call_command("import_prompts", "--generate", "texture", "--count", "40")
    call_command("import_prompts", "--generate", "texture", "--count", "40")
    assert Prompt.objects.filter(subcategory__slug="texture", source="generated").count() == 40
