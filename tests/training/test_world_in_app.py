from __future__ import annotations

import pytest

from annotation.models import ConsensusRanking, PreferencePair, Ranking, RankingTask, TaskStatus
from gallery.models import Generator, Image, Prompt
from training.world import world_gallery_seed, world_rankings_simulate

pytestmark = pytest.mark.django_db


def test_the_world_gallery_gives_each_prompt_six_blind_images_and_a_task():
    report = world_gallery_seed(per_subcategory=1, seed=3)
    assert (report.prompts, report.images, report.tasks_created) == (5, 30, 5)
    assert set(Prompt.objects.values_list("source", flat=True)) == {"synthetic"}
    assert Generator.objects.filter(kind="gallery").count() == 6
    for task in RankingTask.objects.all():
        assert task.task_images.count() == 6
        assert task.task_images.values("image__generator").distinct().count() == 6
    # Seeding again adds nothing.
    again = world_gallery_seed(per_subcategory=1, seed=3)
    assert (again.images, again.tasks_created) == (0, 0)
    assert Image.objects.count() == 30


def test_simulated_experts_rank_tasks_once_each_and_consensus_yields_fifteen_pairs():
    world_gallery_seed(per_subcategory=1, seed=3, required_rankings=3)
    assert world_rankings_simulate(per_task=3, seed=0) == 15
    assert world_rankings_simulate(per_task=3, seed=0) == 0  # complete tasks are not ranked again
    assert set(RankingTask.objects.values_list("status", flat=True)) == {TaskStatus.COMPLETE}
    assert Ranking.objects.values("annotator").distinct().count() == 3
    assert ConsensusRanking.objects.count() == 5
    assert PreferencePair.objects.count() == 5 * 15
