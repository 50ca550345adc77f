"""The compositional categories of IterComp, their subcategories and what annotators judge.

Single source for the seeding migration, prompt import (file stem → category) and guidelines.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CategoryDef:
    slug: str
    name: str
    what_to_judge: str
    guidelines: str
    allows_ties: bool
    position: int
    subcategories: tuple[tuple[str, str], ...] = ()


CATEGORIES: tuple[CategoryDef, ...] = (
    CategoryDef(
        slug="attribute_binding",
        name="Attribute binding",
        what_to_judge="Are the attributes (color, shape, texture) bound to the right objects?",
        guidelines=(
            "Rank first the image where every object named in the prompt is present and carries exactly "
            "the attribute the prompt gives it. An attribute on the wrong object (a red bench when the car "
            "should be red) is worse than a faint or imperfect attribute on the right one. Image quality "
            "only breaks ties between equally correct images.\n\n"
            "Worked example — 'a green bench and a red car': green bench + red car > green bench + green car "
            "> red bench + green car (swapped) > only a car."
        ),
        allows_ties=False,
        position=0,
        subcategories=(("color", "Color"), ("shape", "Shape"), ("texture", "Texture")),
    ),
    CategoryDef(
        slug="spatial",
        name="Spatial relationships",
        what_to_judge="Are the objects present and placed as the prompt says (left, right, above, below…)?",
        guidelines=(
            "First check both objects are there; then their placement. An image with both objects in the "
            "wrong arrangement beats one missing an object; the correct arrangement beats both.\n\n"
            "Worked example — 'a dog on the left of a cat': dog left + cat right > both, reversed > only a dog."
        ),
        allows_ties=False,
        position=1,
    ),
    CategoryDef(
        slug="non_spatial",
        name="Non-spatial relationships",
        what_to_judge="Do the objects interact naturally and correctly (holding, wearing, inside, touching…)?",
        guidelines=(
            "Judge whether the interaction the prompt names is shown and looks natural. Objects merely "
            "side by side without the interaction rank below a clear, correct interaction.\n\n"
            "Worked example — 'a man holding an umbrella': umbrella in hand > umbrella next to the man > no umbrella."
        ),
        allows_ties=False,
        position=2,
    ),
)

# T2I-CompBench file stems → (category slug, subcategory slug or None).
FILE_STEMS: dict[str, tuple[str, str | None]] = {
    "color": ("attribute_binding", "color"),
    "shape": ("attribute_binding", "shape"),
    "texture": ("attribute_binding", "texture"),
    "spatial": ("spatial", None),
    "non_spatial": ("non_spatial", None),
}


def categories_ensure(category_model, subcategory_model) -> None:
    """Create or refresh the categories; the data migration passes its historical models."""
    for definition in CATEGORIES:
        category, _ = category_model.objects.update_or_create(
            slug=definition.slug,
            defaults={
                "name": definition.name,
                "what_to_judge": definition.what_to_judge,
                "guidelines": definition.guidelines,
                "allows_ties": definition.allows_ties,
                "position": definition.position,
            },
        )
        for slug, name in definition.subcategories:
            subcategory_model.objects.update_or_create(
                slug=slug, defaults={"name": name, "category": category}
            )
