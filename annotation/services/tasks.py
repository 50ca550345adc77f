"""Ranking-task creation: one task per prompt and image set, with the number of rankings it needs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from annotation.models import RankingTask, TaskImage, TaskStatus
from annotation.services.selection import task_selection_initial
from gallery.models import Category, Image, Prompt
from gallery.selectors import GALLERY_SIZE, complete_galleries


class TaskError(ValueError):
    """The images cannot form a ranking task (too few, duplicated, of another prompt)."""


def ranking_task_ensure(
    *,
    prompt: Prompt,
    images: Sequence[Image],
    required_rankings: int | None = None,
    iteration: int = 0,
) -> tuple[RankingTask, bool]:
    """The prompt's live task over exactly these images, created if there is none.

    Idempotent: an open (or already complete) task with the same prompt and image set is returned instead of
    a duplicate. A retired task does not count, so retiring a task and re-running creates a fresh one.
    """
    ids = [image.pk for image in images]
    if len(ids) < 2:
        raise TaskError(f"a ranking task needs at least 2 images, got {len(ids)}")
    if len(set(ids)) != len(ids):
        raise TaskError(f"an image appears twice in the task: {sorted(ids)}")
    foreign = [image.pk for image in images if image.prompt_id != prompt.pk]
    if foreign:
        raise TaskError(f"images {foreign} belong to another prompt than {prompt.pk}")
    required = settings.RANKINGS_PER_TASK if required_rankings is None else required_rankings
    if required < 1:
        raise TaskError("a task must require at least one ranking")
    # Validation above raises before the transaction starts, so a caller inside its own transaction can
    # catch a TaskError and go on; the block below adds no savepoint (an import row already is one).
    with transaction.atomic(savepoint=False):
        return _task_ensure(prompt, images, ids, required, iteration)


def _task_ensure(
    prompt: Prompt, images: Sequence[Image], ids: list[int], required: int, iteration: int
) -> tuple[RankingTask, bool]:
    # Row lock on the prompt: two creators racing for the same prompt serialise here, so the second sees
    # the first's task instead of adding a duplicate.
    Prompt.objects.select_for_update().filter(pk=prompt.pk).get()
    wanted = frozenset(ids)
    sets: dict[int, set[int]] = defaultdict(set)
    live = TaskImage.objects.filter(task__prompt=prompt).exclude(task__status=TaskStatus.RETIRED)
    for task_id, image_id in live.values_list("task_id", "image_id"):
        sets[task_id].add(image_id)
    for task_id in sorted(sets):
        if sets[task_id] == wanted:
            return RankingTask.objects.get(pk=task_id), False
    selection = task_selection_initial(prompt_id=prompt.pk, category_id=prompt.category_id, image_ids=ids)
    task = RankingTask.objects.create(
        prompt=prompt, required_rankings=required, iteration=iteration, **selection
    )
    # Positions follow the content hash, which says nothing about the generator (annotators stay blind);
    # each annotator is shown a shuffled order anyway.
    ordered = sorted(images, key=lambda image: (image.sha256, image.pk))
    TaskImage.objects.bulk_create(
        TaskImage(task=task, image=image, position=position) for position, image in enumerate(ordered)
    )
    return task, True


@dataclass(frozen=True)
class TaskCreationReport:
    created: int
    existing: int

    @property
    def complete_galleries(self) -> int:
        return self.created + self.existing


def ranking_tasks_create_for_complete_galleries(
    *,
    required_rankings: int | None = None,
    category: Category | None = None,
    min_generators: int = GALLERY_SIZE,
    iteration: int = 0,
) -> TaskCreationReport:
    """A task for every prompt whose gallery is complete: one image from each of ≥ ``min_generators``
    distinct gallery generators (six in IterComp; more once models join). Safe to run again: prompts that
    already have a task over the same images are counted as existing.

    Each task is its own transaction, so a long run never holds locks on more than one prompt.
    """
    created = existing = 0
    # Read every live task's image set once, so prompts that already have their task cost no lock and no
    # query; ranking_task_ensure re-checks under the prompt's lock before it creates anything.
    live: dict[int, set[frozenset[int]]] = defaultdict(set)
    by_task: dict[tuple[int, int], set[int]] = defaultdict(set)
    rows = TaskImage.objects.exclude(task__status=TaskStatus.RETIRED).values_list(
        "task__prompt_id", "task_id", "image_id"
    )
    for prompt_id, task_id, image_id in rows.iterator(chunk_size=10_000):
        by_task[(prompt_id, task_id)].add(image_id)
    for (prompt_id, _), image_ids in by_task.items():
        live[prompt_id].add(frozenset(image_ids))
    for prompt, images in complete_galleries(min_generators=min_generators, category=category):
        if frozenset(image.pk for image in images) in live[prompt.pk]:
            existing += 1
            continue
        _, was_created = ranking_task_ensure(
            prompt=prompt, images=images, required_rankings=required_rankings, iteration=iteration
        )
        created += was_created
        existing += not was_created
    return TaskCreationReport(created=created, existing=existing)
