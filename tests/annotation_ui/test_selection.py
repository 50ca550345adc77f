"""Active selection in the claim path: the queue follows the stored priority, a mix keeps its random
share, an admin's policy change reorders the queue at once, and claiming costs no extra statement."""

from __future__ import annotations

import random

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotation.models import RankingTask
from annotation.services.claims import task_claim_next
from annotation.services.selection import selection_policy_set, task_scores_record
from annotation.services.tasks import ranking_task_ensure
from gallery.models import Category
from gallery.services import prompt_ensure
from rankmath.selection import binomial_tolerance, in_random_share, selection_draw
from tests.annotation_ui.conftest import generators, make_image

pytestmark = pytest.mark.django_db


@pytest.fixture
def spatial():
    return Category.objects.get(slug="spatial")


def _tasks(category: Category, n: int, images: int = 2, required: int = 1) -> list[RankingTask]:
    """n tasks made the way production makes them (ranking_task_ensure assigns draw and priority)."""
    gens = generators(images)
    out = []
    for i in range(n):
        prompt, _ = prompt_ensure(text=f"a cube left of a ball, selection {i}", category=category)
        task, _ = ranking_task_ensure(
            prompt=prompt, images=[make_image(prompt, g) for g in gens], required_rankings=required
        )
        out.append(task)
    return out


def test_a_new_task_gets_its_draw_from_its_prompt_and_images_and_a_random_priority(spatial):
    (task,) = _tasks(spatial, 1)
    image_ids = list(task.task_images.values_list("image_id", flat=True))
    assert task.selection_draw == selection_draw(task.prompt_id, image_ids)
    assert task.priority == task.selection_draw  # no policy set: random


def test_the_claim_order_follows_the_stored_priority(make_user, spatial, settings):
    settings.GOLD_TASK_RATE = 0
    tasks = _tasks(spatial, 5)
    rng = random.Random(11)
    scores = {t.pk: rng.random() for t in tasks}
    selection_policy_set(category=spatial, policy="uncertainty", user=None)
    task_scores_record(category_id=spatial.pk, uncertainty=scores, disagreement={})
    annotator = make_user("annotator")
    claimed = [task_claim_next(annotator=annotator, category=spatial).task_id for _ in tasks]
    assert claimed == sorted(scores, key=scores.get, reverse=True)
    stored = dict(RankingTask.objects.values_list("pk", "priority"))
    assert claimed == sorted(stored, key=stored.get, reverse=True)


def test_changing_the_policy_reorders_the_queue_from_the_stored_scores(make_user, spatial, settings):
    settings.GOLD_TASK_RATE = 0
    tasks = _tasks(spatial, 4)
    uncertainty = {t.pk: float(i) for i, t in enumerate(tasks)}
    disagreement = {t.pk: float(-i) for i, t in enumerate(tasks)}
    task_scores_record(category_id=spatial.pk, uncertainty=uncertainty, disagreement=disagreement)
    # Still random: the scores are stored but the draws order the queue.
    by_draw = sorted(tasks, key=lambda t: t.selection_draw, reverse=True)
    assert task_claim_next(annotator=make_user("annotator"), category=spatial).task_id == by_draw[0].pk
    selection_policy_set(category=spatial, policy="disagreement", user=None)
    assert task_claim_next(annotator=make_user("annotator"), category=spatial).task_id == tasks[0].pk
    selection_policy_set(category=spatial, policy="uncertainty", user=None)
    assert task_claim_next(annotator=make_user("annotator"), category=spatial).task_id == tasks[-1].pk
    with pytest.raises(ValueError, match="share"):
        selection_policy_set(category=spatial, policy="mix", random_share=1.0, user=None)


@pytest.mark.slow
def test_a_mix_keeps_its_random_share_over_many_claims(make_user, spatial, settings):
    """Half the queue is claimed; the random-share tasks among the claims stay at their share of the queue
    within 4 sd of a binomial, although every selected task's score is higher than any random-share
    task could win by score alone."""
    settings.GOLD_TASK_RATE = 0
    share, n_tasks = 0.25, 240
    tasks = _tasks(spatial, n_tasks)
    rng = random.Random(20261206)
    selection_policy_set(category=spatial, policy="mix", random_share=share, user=None)
    random_share = {t.pk for t in tasks if in_random_share(t.selection_draw, share)}
    # Random-share tasks get the lowest uncertainty: ordered by score alone they would never be claimed.
    scores = {t.pk: rng.random() + (0.0 if t.pk in random_share else 10.0) for t in tasks}
    task_scores_record(category_id=spatial.pk, uncertainty=scores, disagreement={})
    annotator = make_user("annotator")
    n_claims = n_tasks // 2
    claimed = [task_claim_next(annotator=annotator, category=spatial).task_id for _ in range(n_claims)]
    from_share = sum(pk in random_share for pk in claimed)
    expected = n_claims * len(random_share) / n_tasks
    assert abs(from_share - expected) <= binomial_tolerance(n_claims, share), (from_share, expected)
    # The selected tasks among the claims came in order of uncertainty.
    selected = [pk for pk in claimed if pk not in random_share]
    assert selected == sorted(selected, key=scores.get, reverse=True)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_claiming_under_a_selection_policy_takes_as_many_statements_as_random(make_user, spatial, settings):
    # transaction=True as in test_claiming's statement-count test: BEGIN and COMMIT are counted.
    settings.GOLD_TASK_RATE = 0
    tasks = _tasks(spatial, 6, required=2)
    counts = {}
    for policy in ("random", "mix"):
        selection_policy_set(category=spatial, policy=policy, random_share=0.5, user=None)
        task_scores_record(
            category_id=spatial.pk, uncertainty={t.pk: float(t.pk) for t in tasks}, disagreement={}
        )
        annotator = make_user("annotator")
        with CaptureQueriesContext(connection) as queries:
            assert task_claim_next(annotator=annotator, category=spatial) is not None
        counts[policy] = len(queries)
        claim_sql = [q["sql"] for q in queries.captured_queries if "FOR NO KEY UPDATE" in q["sql"]]
        assert claim_sql and '"priority" DESC' in claim_sql[0]
    assert counts["mix"] == counts["random"] <= 10
