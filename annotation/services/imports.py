"""Rankings imported from files (IterComp, ImageReward): the task they belong to and the ranking itself."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import transaction

from annotation.models import Ranking, Role
from annotation.services.task_status import task_complete
from annotation.services.tasks import ranking_task_ensure
from annotation.services.users import generate_password, user_create
from gallery.models import Image, Prompt
from rankmath.rankformats import OrderingError, validate_ordering


class RankingImportError(ValueError):
    """An imported ranking conflicts with what is stored, or names an unusable annotator."""


def annotator_ensure(*, username: str) -> AbstractUser:
    """The named annotator, created (role annotator, no usable password) if missing.

    Imported experts do not log in with their import name; an admin sets a password if they should.
    """
    user_model = get_user_model()
    try:
        user_model.username_validator(username)
    except ValidationError as exc:
        raise RankingImportError(
            f"annotator name {username!r} is not a valid username: {exc.messages[0]}"
        ) from None
    with transaction.atomic(savepoint=False):
        existing = user_model.objects.filter(username=username).first()
        if existing is not None:
            return existing
        user = user_create(username=username, role=Role.ANNOTATOR, password=generate_password())
        user.set_unusable_password()
        user.save(update_fields=["password"])
        return user


def ranking_import(
    *,
    prompt: Prompt,
    ordering: Sequence[Sequence[Image]],
    annotator: AbstractUser,
    source: str = "import",
    required_rankings: int | None = None,
    iteration: int = 0,
) -> tuple[Ranking, bool]:
    """Store ``annotator``'s ordering (tie groups of images, best first) on the prompt's task over those images.

    The task is created when missing (`ranking_task_ensure`). Importing the same ranking again changes
    nothing; a *different* ordering by the same annotator for the same task is refused rather than silently
    overwriting an expert's judgement. The ordering is checked before the transaction starts; the block
    itself adds no savepoint (an import row already is one), so a conflict fails the caller's block.
    """
    try:
        groups = validate_ordering([[image.pk for image in group] for group in ordering])
    except OrderingError as exc:
        raise RankingImportError(str(exc)) from None
    images = [image for group in ordering for image in group]
    with transaction.atomic(savepoint=False):
        task, _ = ranking_task_ensure(
            prompt=prompt, images=images, required_rankings=required_rankings, iteration=iteration
        )
        existing = Ranking.objects.filter(task=task, annotator=annotator).first()
        if existing is not None:
            if validate_ordering(existing.ordering) == groups:
                return existing, False
            raise RankingImportError(
                f"{annotator.get_username()} already ranked task {task.pk} as {existing.ordering}, "
                f"not {groups}; remove that ranking first to replace it"
            )
        ranking = Ranking.objects.create(
            task=task, annotator=annotator, ordering=groups, shown_order=[], source=source
        )
        # A task with all its rankings leaves the annotators' queue (conditional: only an open task changes).
        if task.rankings.count() >= task.required_rankings:
            task_complete(task_id=task.pk)
        return ranking, True
