"""Quality control: gold tasks (an admin's reference ranking, interleaved into the queue unseen) and the
annotator weights derived from how well each annotator agrees with them and with the others."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from annotation.models import AnnotatorProfile, Ranking, RankingTask, TaskImage
from annotation.services.consensus import consensus_schedule
from annotation.services.refusals import SubmissionInvalid
from annotation.services.selection import task_selection_initial
from annotation.services.submission import labels_to_image_ids, ordering_from_positions
from gallery.models import Image, Prompt
from rankmath.agreement import WeightPolicy, weights_from_agreement
from rankmath.rankformats import validate_ordering

logger = logging.getLogger(__name__)

MAX_TASK_IMAGES = 8


def gold_image_candidates(*, prompt: Prompt) -> list[Image]:
    """The images a gold task for this prompt shows: those of its latest task, else the newest image of
    each generator (at most MAX_TASK_IMAGES)."""
    latest_task = prompt.ranking_tasks.filter(is_gold=False).order_by("-iteration", "-id").first()
    if latest_task is not None:
        return [ti.image for ti in latest_task.task_images.select_related("image").order_by("position")]
    newest: dict[int, Image] = {}
    for image in prompt.images.order_by("-iteration", "-id"):
        newest.setdefault(image.generator_id, image)
    return sorted(newest.values(), key=lambda im: im.pk)[:MAX_TASK_IMAGES]


@transaction.atomic
def gold_task_create(
    *,
    prompt: Prompt,
    image_ids: Sequence[int],
    fields: Mapping[str, Sequence[str]],
    required_rankings: int,
    created_by: AbstractBaseUser,
) -> RankingTask:
    """A gold task: the admin's reference ranking over these images (labels 1..N in ``image_ids`` order).

    It joins the queue like any task; annotators cannot tell it apart.
    """
    image_ids = list(image_ids)
    if not 2 <= len(image_ids) <= MAX_TASK_IMAGES:
        raise SubmissionInvalid(f"A task shows 2 to {MAX_TASK_IMAGES} images; got {len(image_ids)}.")
    found = set(Image.objects.filter(pk__in=image_ids, prompt=prompt).values_list("pk", flat=True))
    if found != set(image_ids):
        raise SubmissionInvalid("Some images do not belong to this prompt.")
    if required_rankings < 1:
        raise SubmissionInvalid("A gold task needs at least one ranking.")
    allow_ties = prompt.category.allows_ties
    labels = ordering_from_positions(fields, n_images=len(image_ids), allow_ties=allow_ties)
    reference = validate_ordering(
        labels_to_image_ids(labels, image_ids), items=image_ids, allow_ties=allow_ties
    )
    task = RankingTask.objects.create(
        prompt=prompt,
        required_rankings=required_rankings,
        is_gold=True,
        gold_ordering=reference,
        iteration=max((ti for ti in prompt.ranking_tasks.values_list("iteration", flat=True)), default=0),
        **task_selection_initial(prompt_id=prompt.pk, category_id=prompt.category_id, image_ids=image_ids),
    )
    TaskImage.objects.bulk_create(
        TaskImage(task=task, image_id=image_id, position=i) for i, image_id in enumerate(image_ids)
    )
    logger.info("gold task %s created by %s for prompt %s", task.pk, created_by.pk, prompt.pk)
    return task


def annotator_weights_schedule() -> None:
    """Derive annotator weights in a worker (an admin's button), after the current transaction commits."""
    from annotation.tasks import derive_weights

    transaction.on_commit(lambda: derive_weights.delay())


@transaction.atomic
def annotator_weights_derive(
    *, policy: WeightPolicy | None = None, recompute: bool = True
) -> dict[int, float]:
    """Set every annotator's weight from their agreement (gold tau when they have enough gold tasks,
    else leave-one-out tau against the others' consensus, else the policy's default).

    Returns ``{user_id: weight}``. With ``recompute`` the consensus of every task they ranked is
    recomputed after commit, since the weights it was built with changed.
    """
    from annotation.selectors_research import annotator_taus

    taus = annotator_taus()
    weights = weights_from_agreement(
        {uid: t.loo for uid, t in taus.items()}, {uid: t.gold for uid, t in taus.items()}, policy
    )
    changed: list[int] = []
    for user_id, weight in weights.items():
        updated = (
            AnnotatorProfile.objects.filter(user_id=user_id).exclude(weight=weight).update(weight=weight)
        )
        if updated:
            changed.append(int(user_id))
    if recompute and changed:
        task_ids = (
            Ranking.objects.filter(annotator_id__in=changed)
            .values_list("task_id", flat=True)
            .order_by("task_id")
            .distinct()
        )
        for task_id in task_ids:
            consensus_schedule(task_id=task_id)
    return {int(uid): w for uid, w in weights.items()}
