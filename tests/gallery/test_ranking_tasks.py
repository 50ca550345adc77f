"""Ranking tasks for complete galleries: six images from six distinct gallery generators, no duplicates."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from annotation.models import RankingTask, TaskStatus
from annotation.services.tasks import (
    TaskError,
    ranking_task_ensure,
    ranking_tasks_create_for_complete_galleries,
)
from gallery.models import Category, Generator, Subcategory
from gallery.services.images import image_register
from gallery.services.prompts import prompt_ensure

from .conftest import png_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(itercomp_generators):
    color = Category.objects.get(slug="attribute_binding")
    sub = Subcategory.objects.get(slug="color")
    spatial = Category.objects.get(slug="spatial")
    prompts = {
        "complete": prompt_ensure(text="a red cup and a blue vase", category=color, subcategory=sub)[0],
        "also_complete": prompt_ensure(text="a dog behind a chair", category=spatial)[0],
        "five": prompt_ensure(text="a cat near a lamp", category=spatial)[0],
    }
    seed = 0
    for name, prompt in prompts.items():
        for slug in list(itercomp_generators)[: 5 if name == "five" else 6]:
            seed += 1
            image_register(
                prompt=prompt, generator=itercomp_generators[slug], image=png_bytes(seed), with_display=False
            )
    return prompts


def test_tasks_are_created_only_for_complete_galleries_with_the_default_rankings(world, settings):
    settings.RANKINGS_PER_TASK = 4
    report = ranking_tasks_create_for_complete_galleries()
    assert (report.created, report.existing) == (2, 0)
    tasks = RankingTask.objects.order_by("prompt_id")
    assert [t.prompt.text for t in tasks] == ["a red cup and a blue vase", "a dog behind a chair"]
    for task in tasks:
        assert task.required_rankings == 4 and task.status == TaskStatus.OPEN
        assert sorted(task.images.values_list("generator__slug", flat=True)) == sorted(
            ["sd15", "sdxl", "sd3", "flux", "rpg", "instancediffusion"]
        )
        assert sorted(task.task_images.values_list("position", flat=True)) == [0, 1, 2, 3, 4, 5]


def test_running_again_creates_no_duplicate_and_a_retired_task_is_replaced(world):
    ranking_tasks_create_for_complete_galleries(required_rankings=2)
    again = ranking_tasks_create_for_complete_galleries(required_rankings=2)
    assert (again.created, again.existing) == (0, 2)
    assert RankingTask.objects.count() == 2
    RankingTask.objects.filter(prompt=world["complete"]).update(status=TaskStatus.RETIRED)
    assert ranking_tasks_create_for_complete_galleries().created == 1
    assert RankingTask.objects.filter(prompt=world["complete"]).count() == 2


def test_a_further_image_by_a_known_generator_keeps_the_task_set_stable(world, itercomp_generators):
    ranking_tasks_create_for_complete_galleries()
    image_register(
        prompt=world["complete"],
        generator=itercomp_generators["flux"],
        image=png_bytes(999),
        with_display=False,
    )
    assert ranking_tasks_create_for_complete_galleries().created == 0


def test_a_seventh_gallery_model_joins_new_tasks(world, itercomp_generators):
    ranking_tasks_create_for_complete_galleries()
    newcomer = Generator.objects.create(name="Newcomer", slug="newcomer")
    image_register(prompt=world["complete"], generator=newcomer, image=png_bytes(777), with_display=False)
    image_register(prompt=world["five"], generator=newcomer, image=png_bytes(778), with_display=False)
    report = ranking_tasks_create_for_complete_galleries()
    assert report.created == 2  # the 7-image gallery of "complete", and "five" now has six generators
    assert RankingTask.objects.filter(prompt=world["complete"]).order_by("-id").first().images.count() == 7


def test_category_filter_and_command(world, capsys):
    call_command("create_ranking_tasks", "--category", "spatial", "--rankings", "5")
    assert "1 complete galleries: 1 new tasks, 0 existing" in capsys.readouterr().out
    assert RankingTask.objects.get().required_rankings == 5


def test_ensure_refuses_image_sets_that_cannot_be_ranked(world):
    complete = world["complete"]
    images = list(complete.images.all())
    with pytest.raises(TaskError, match="at least 2"):
        ranking_task_ensure(prompt=complete, images=images[:1])
    with pytest.raises(TaskError, match="twice"):
        ranking_task_ensure(prompt=complete, images=[images[0], images[0], images[1]])
    with pytest.raises(TaskError, match="another prompt"):
        ranking_task_ensure(prompt=complete, images=[images[0], world["five"].images.first()])
    assert RankingTask.objects.count() == 0
