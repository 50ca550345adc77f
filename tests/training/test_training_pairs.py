from __future__ import annotations

import hashlib

import pytest

from annotation.models import ConsensusRanking, PairSource, PreferencePair, RankingTask
from annotation.selectors_training import pairs_for_training
from annotation.services.model_pairs import model_pairs_replace
from gallery.models import Category, Generator, Image
from gallery.services.prompts import prompt_ensure

pytestmark = pytest.mark.django_db


def _images(prompt, n, start=0):
    gen, _ = Generator.objects.get_or_create(slug="g", defaults={"name": "G"})
    out = []
    for i in range(start, start + n):
        sha = hashlib.sha256(f"{prompt.pk}-{i}".encode()).hexdigest()
        out.append(
            Image.objects.create(
                prompt=prompt, generator=gen, file=f"i/{sha}.png", sha256=sha, format="PNG", width=8, height=8
            )
        )
    return out


def _consensus(prompt, images, iteration=0):
    task = RankingTask.objects.create(prompt=prompt, iteration=iteration)
    return ConsensusRanking.objects.create(task=task, ordering=[[i.pk] for i in images], n_rankings=3)


def _human_pairs(prompt, consensus, images, iteration):
    for a in range(len(images)):
        for b in range(a + 1, len(images)):
            PreferencePair.objects.create(
                prompt=prompt,
                category=prompt.category,
                winner=images[a],
                loser=images[b],
                consensus=consensus,
                iteration=iteration,
            )


@pytest.fixture
def prompt():
    return prompt_ensure(
        text="a red circle left of a blue square", category=Category.objects.get(slug="spatial")
    )[0]


def test_new_samples_are_inserted_by_score_without_reordering_the_humans(prompt):
    human = _images(prompt, 3)
    consensus = _consensus(prompt, human)
    new = _images(prompt, 2, start=10)
    # Reward scores disagree with the human order (human[2] scores highest); humans still keep theirs.
    scores = {human[0].pk: 0.5, human[1].pk: 0.1, human[2].pk: 0.9, new[0].pk: 0.3, new[1].pk: -1.0}
    ordering = model_pairs_replace(
        prompt=prompt, consensus=consensus, new_images=new, scores=scores, iteration=1
    )
    flat = [i for g in ordering for i in g]
    assert [i for i in flat if i in {h.pk for h in human}] == [h.pk for h in human]
    assert flat.index(new[0].pk) < flat.index(new[1].pk)
    assert flat[-1] == new[1].pk
    model = PreferencePair.objects.filter(source=PairSource.MODEL)
    # Pairs involving a new image only: 2 new × 3 human + 1 between the new ones.
    assert model.count() == 7
    assert set(model.values_list("iteration", flat=True)) == {1}


def test_inserting_again_replaces_the_model_pairs_instead_of_adding(prompt):
    human = _images(prompt, 2)
    consensus = _consensus(prompt, human)
    new = _images(prompt, 1, start=10)
    scores = {human[0].pk: 1.0, human[1].pk: 0.0, new[0].pk: 0.5}
    for _ in range(2):
        model_pairs_replace(prompt=prompt, consensus=consensus, new_images=new, scores=scores, iteration=1)
    assert PreferencePair.objects.filter(source=PairSource.MODEL).count() == 2


def test_a_missing_score_is_refused(prompt):
    human = _images(prompt, 2)
    with pytest.raises(ValueError, match="no reward score"):
        model_pairs_replace(
            prompt=prompt,
            consensus=_consensus(prompt, human),
            new_images=_images(prompt, 1, 5),
            scores={human[0].pk: 1.0},
            iteration=1,
        )


def test_training_pairs_use_the_latest_human_consensus_and_newer_model_pairs(prompt):
    gallery = _images(prompt, 3)
    old = _consensus(prompt, gallery, iteration=0)
    _human_pairs(prompt, old, gallery, 0)
    new = _images(prompt, 1, start=10)
    scores = {**{g.pk: -i for i, g in enumerate(gallery)}, new[0].pk: 5.0}
    model_pairs_replace(prompt=prompt, consensus=old, new_images=new, scores=scores, iteration=1)

    before = pairs_for_training(category_slug="spatial", upto_iteration=1)
    assert before.filter(source="human").count() == 3 and before.filter(source="model").count() == 3
    assert pairs_for_training(category_slug="spatial", upto_iteration=0).count() == 3

    # The pushed task (gallery + sample) gets its human consensus: it replaces every older pair.
    pushed = _consensus(prompt, [*gallery, *new], iteration=1)
    _human_pairs(prompt, pushed, [*gallery, *new], 1)
    after = pairs_for_training(category_slug="spatial", upto_iteration=1)
    assert after.count() == 6 and set(after.values_list("consensus_id", flat=True)) == {pushed.pk}
    assert pairs_for_training(category_slug="attribute_binding", upto_iteration=1).count() == 0
