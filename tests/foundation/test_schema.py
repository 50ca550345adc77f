from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from annotation.models import PreferencePair, Ranking, RankingTask, TaskImage
from gallery.models import Category, Generator, Image, Prompt, Subcategory
from gallery.services import prompt_ensure
from gallery.splits import split_for_text

pytestmark = pytest.mark.django_db


def _image(prompt, generator, sha="a" * 64):
    return Image.objects.create(
        prompt=prompt,
        generator=generator,
        file=f"images/{sha}.png",
        sha256=sha,
        format="PNG",
        width=64,
        height=64,
    )


def test_categories_and_subcategories_are_seeded_by_migration():
    assert list(Category.objects.values_list("slug", flat=True)) == [
        "attribute_binding",
        "spatial",
        "non_spatial",
    ]
    assert set(Subcategory.objects.values_list("slug", flat=True)) == {"color", "shape", "texture"}
    assert all(c.allows_ties is False for c in Category.objects.all())


def test_a_prompt_keeps_one_split_whatever_imports_it():
    spatial = Category.objects.get(slug="spatial")
    binding = Category.objects.get(slug="attribute_binding")
    color = Subcategory.objects.get(slug="color")
    a, created_a = prompt_ensure(text="a  red cube  on a table", category=spatial)
    b, created_b = prompt_ensure(text="a red cube on a table", category=binding, subcategory=color)
    again, created_again = prompt_ensure(text="a red cube on a table ", category=spatial)
    assert created_a and created_b and not created_again
    assert again.pk == a.pk
    assert a.split == b.split == split_for_text("a red cube on a table")


def test_the_same_prompt_text_is_stored_once_per_category_even_without_subcategory():
    spatial = Category.objects.get(slug="spatial")
    Prompt.objects.create(text="x left of y", category=spatial, split="train")
    with pytest.raises(IntegrityError), transaction.atomic():
        Prompt.objects.create(text="x left of y", category=spatial, split="train")


def test_a_subcategory_from_another_category_is_refused():
    with pytest.raises(ValueError, match="does not belong"):
        prompt_ensure(
            text="p",
            category=Category.objects.get(slug="spatial"),
            subcategory=Subcategory.objects.get(slug="color"),
        )


def test_one_ranking_per_annotator_per_task(make_user):
    prompt, _ = prompt_ensure(text="a b", category=Category.objects.get(slug="spatial"))
    task = RankingTask.objects.create(prompt=prompt)
    user = make_user()
    Ranking.objects.create(task=task, annotator=user, ordering=[[1], [2]])
    with pytest.raises(IntegrityError), transaction.atomic():
        Ranking.objects.create(task=task, annotator=user, ordering=[[2], [1]])


def test_gold_tasks_need_a_reference_ranking():
    prompt, _ = prompt_ensure(text="a b", category=Category.objects.get(slug="spatial"))
    with pytest.raises(IntegrityError), transaction.atomic():
        RankingTask.objects.create(prompt=prompt, is_gold=True)


def test_an_image_appears_once_per_task_and_positions_are_unique():
    prompt, _ = prompt_ensure(text="a b", category=Category.objects.get(slug="spatial"))
    gen = Generator.objects.create(name="FLUX", slug="flux")
    first, second = _image(prompt, gen, "a" * 64), _image(prompt, gen, "b" * 64)
    task = RankingTask.objects.create(prompt=prompt)
    TaskImage.objects.create(task=task, image=first, position=0)
    with pytest.raises(IntegrityError), transaction.atomic():
        TaskImage.objects.create(task=task, image=first, position=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        TaskImage.objects.create(task=task, image=second, position=0)


def test_a_pair_never_prefers_an_image_over_itself_and_labels_are_one_or_half():
    category = Category.objects.get(slug="spatial")
    prompt, _ = prompt_ensure(text="a b", category=category)
    gen = Generator.objects.create(name="SDXL", slug="sdxl")
    img, other = _image(prompt, gen, "c" * 64), _image(prompt, gen, "d" * 64)
    with pytest.raises(IntegrityError), transaction.atomic():
        PreferencePair.objects.create(prompt=prompt, category=category, winner=img, loser=img)
    with pytest.raises(IntegrityError), transaction.atomic():
        PreferencePair.objects.create(prompt=prompt, category=category, winner=img, loser=other, label=0.7)
    PreferencePair.objects.create(prompt=prompt, category=category, winner=img, loser=other, label=0.5)


def test_a_base_model_generator_must_name_its_iteration():
    with pytest.raises(IntegrityError), transaction.atomic():
        Generator.objects.create(name="base", slug="base", kind="base")
    Generator.objects.create(name="base it1", slug="base-it1", kind="base", base_iteration=1)


def test_image_hash_must_be_a_sha256_hex_digest():
    prompt, _ = prompt_ensure(text="a b", category=Category.objects.get(slug="spatial"))
    gen = Generator.objects.create(name="SD3", slug="sd3")
    with pytest.raises(IntegrityError), transaction.atomic():
        _image(prompt, gen, "not-a-hash")
