"""The admins' review queue: annotators skip or flag a task (giving their slot back), admins resolve the
flag and may retire the task."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from annotation.models import FlagKind, TaskClaim, TaskFlag
from annotation.services.claims import claim_for, claim_reinstate, claim_release, claims_expire_for_task
from annotation.services.refusals import ClaimClosed, ClaimNotFound, SubmissionInvalid
from annotation.services.task_status import task_retire

MAX_REASON_CHARS = 2000
# A skip can be taken back this long after it was made (a key pressed by mistake); later it is the admins'.
SKIP_UNDO_SECONDS = 10


@transaction.atomic
def task_release(*, claim_id: int, annotator: AbstractBaseUser, kind: str, reason: str = "") -> TaskFlag:
    """Skip or flag: give the slot back to the queue and put the task in the admins' review queue.

    The annotator will not be offered this task again (their claim row stays, as RELEASED).
    """
    claim = claim_for(claim_id=claim_id, annotator=annotator)
    if kind not in FlagKind.values:
        raise SubmissionInvalid(f"Unknown action {kind!r}.")
    reason = reason.strip()
    if kind == FlagKind.FLAG and not reason:
        raise SubmissionInvalid("Say what is wrong with this task so an admin can fix it.")
    if len(reason) > MAX_REASON_CHARS:
        raise SubmissionInvalid(f"Keep the reason under {MAX_REASON_CHARS} characters.")
    # An expired claim can still be flagged (the problem is real); a submitted one cannot be skipped.
    if not claim_release(claim_id=claim.pk):
        raise ClaimClosed("This task is already done or given up.")
    return TaskFlag.objects.create(task_id=claim.task_id, annotator=annotator, kind=kind, reason=reason)


@transaction.atomic
def flag_resolve(
    *, flag_id: int, admin: AbstractBaseUser, resolution: str, retire_task: bool = False
) -> TaskFlag:
    """Close a review-queue entry; optionally retire the task so nobody is offered it again."""
    flag = TaskFlag.objects.select_for_update().filter(pk=flag_id).first()
    if flag is None:
        raise ClaimNotFound("No such flag.")
    if flag.resolved_at is not None:
        raise ClaimClosed("This flag was already resolved.")
    flag.resolved_by = admin
    flag.resolved_at = timezone.now()
    flag.resolution = resolution.strip()[:MAX_REASON_CHARS] or ("task retired" if retire_task else "kept")
    flag.save(update_fields=["resolved_by", "resolved_at", "resolution"])
    if retire_task:
        task_retire(task_id=flag.task_id)
        # Holders of the task can no longer submit; their page tells them it was withdrawn.
        claims_expire_for_task(task_id=flag.task_id)
    return flag


def skip_undoable(*, flag: TaskFlag, annotator: AbstractBaseUser, now: datetime | None = None) -> bool:
    """Whether this annotator may still take this skip back (their own, unresolved, within the window)."""
    now = now or timezone.now()
    return (
        flag.kind == FlagKind.SKIP
        and flag.annotator_id == annotator.pk
        and flag.resolved_at is None
        and flag.created_at > now - timedelta(seconds=SKIP_UNDO_SECONDS)
    )


@transaction.atomic
def skip_undo(*, flag_id: int, annotator: AbstractBaseUser) -> TaskClaim:
    """Take a skip back: the task is this annotator's again (same shown order) and leaves the review queue."""
    flag = TaskFlag.objects.select_for_update().filter(pk=flag_id).first()
    if flag is None or flag.annotator_id != annotator.pk or flag.kind != FlagKind.SKIP:
        raise ClaimNotFound("There is no skip of yours to undo.")
    if not skip_undoable(flag=flag, annotator=annotator):
        raise ClaimClosed(
            f"A skip can be undone for {SKIP_UNDO_SECONDS} seconds only; it is in the review queue."
        )
    claim = TaskClaim.objects.get(task_id=flag.task_id, annotator=annotator)
    if not claim_reinstate(claim_id=claim.pk):
        raise ClaimClosed("Someone else took this task's free slot in the meantime; it stays skipped.")
    flag.delete()
    claim.refresh_from_db()
    return claim
