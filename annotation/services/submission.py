"""Submitting a ranking: parsing the position form, recording the ranking against its claim, and the
annotator's correction of their last ranking."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from annotation.models import ClaimStatus, Ranking, RankingTask, TaskClaim, TaskStatus
from annotation.services.claims import (
    CLAIM_SUBMIT_CTE,
    CLAIM_SUBMIT_PARAMS,
    claim_for,
    claim_mark_submitted,
)
from annotation.services.consensus import consensus_schedule
from annotation.services.refusals import (
    ClaimClosed,
    ClaimNotYours,
    CorrectionRefused,
    LeaseExpired,
    SubmissionInvalid,
)
from annotation.services.task_status import task_complete_if_full
from rankmath.rankformats import Ordering, OrderingError, validate_ordering

# How long an annotator may correct their own last ranking.
CORRECTION_WINDOW_SECONDS: int = getattr(settings, "RANKING_CORRECTION_SECONDS", 300)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------
# Parsing the position form (pure; the view passes request.POST lists in)
# --------------------------------------------------------------------------------------------------------

RANK_FIELD_PREFIX = "rank_"


def ordering_from_positions(
    fields: Mapping[str, Sequence[str]], *, n_images: int, allow_ties: bool
) -> Ordering:
    """Turn ``rank_<label>`` fields (label 1..N in the shown order, value = rank 1..N) into an ordering
    of labels, best first, e.g. ``{"rank_1": ["2"], "rank_2": ["1"]}`` -> ``[[2], [1]]``.

    Every problem becomes a :class:`SubmissionInvalid` whose message names the images concerned, in the
    annotator's own labels (they never see image ids).
    """
    problems: list[str] = []
    ranks: dict[int, int] = {}
    for name, values in fields.items():
        if not name.startswith(RANK_FIELD_PREFIX):
            continue
        suffix = name[len(RANK_FIELD_PREFIX) :]
        if not suffix.isdigit() or not 1 <= int(suffix) <= n_images:
            problems.append(f"“{suffix}” is not one of this task's images (1–{n_images})")
            continue
        label = int(suffix)
        filled = [v for v in values if str(v).strip() != ""]
        if len(filled) > 1:
            problems.append(f"image {label} was given {len(filled)} ranks")
            continue
        if not filled:
            continue
        value = str(filled[0]).strip()
        if not value.isdigit() or not 1 <= int(value) <= n_images:
            problems.append(f"image {label} has rank “{value}”, expected 1–{n_images}")
            continue
        ranks[label] = int(value)
    missing = [
        label for label in range(1, n_images + 1) if label not in ranks and not _mentioned(fields, label)
    ]
    if missing:
        problems.append(f"{_images(missing)} {'has' if len(missing) == 1 else 'have'} no rank yet")
    if problems:
        raise SubmissionInvalid(_sentence(problems))
    by_rank: dict[int, list[int]] = {}
    for label, rank in ranks.items():
        by_rank.setdefault(rank, []).append(label)
    if not allow_ties:
        shared = [(rank, labels) for rank, labels in sorted(by_rank.items()) if len(labels) > 1]
        if shared:
            rank, labels = shared[0]
            raise SubmissionInvalid(
                f"{_images(sorted(labels))} share rank {rank}; this category does not allow ties — "
                "give each image its own rank."
            )
    return [sorted(by_rank[rank]) for rank in sorted(by_rank)]


def _mentioned(fields: Mapping[str, Sequence[str]], label: int) -> bool:
    # An image with a malformed value is already reported; do not also call it missing.
    values = fields.get(f"{RANK_FIELD_PREFIX}{label}")
    return bool(values) and any(str(v).strip() for v in values)


def _images(labels: Sequence[int]) -> str:
    if len(labels) == 1:
        return f"Image {labels[0]}"
    return "Images " + ", ".join(str(x) for x in labels[:-1]) + f" and {labels[-1]}"


def _sentence(problems: list[str]) -> str:
    text = "; ".join(problems)
    return text[0].upper() + text[1:] + "."


def labels_to_image_ids(ordering: Ordering, shown_order: Sequence[int]) -> Ordering:
    """Map an ordering of 1-based shown labels to image ids through the claim's shown order."""
    return [[shown_order[label - 1] for label in group] for group in ordering]


def positions_from_ordering(ordering: Ordering, shown_order: Sequence[int]) -> dict[int, int]:
    """The inverse, for pre-filling a form: label -> rank (tied images share the rank of their group)."""
    label_of = {image_id: i + 1 for i, image_id in enumerate(shown_order)}
    result: dict[int, int] = {}
    rank = 1
    for group in ordering:
        for image_id in group:
            if image_id in label_of:
                result[label_of[image_id]] = rank
        rank += len(group)
    return result


def parse_idempotency_key(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError) as exc:
        raise SubmissionInvalid("The form is missing its submission key; reload the page.") from exc


# --------------------------------------------------------------------------------------------------------
# Submitting
# --------------------------------------------------------------------------------------------------------


def _schedule_consensus(task_id: int) -> None:
    """Let the consensus engine recompute this task in a worker (it owns consensus and pairs)."""
    consensus_schedule(task_id=task_id)


def ranking_submit(
    *,
    claim_id: int,
    annotator: AbstractBaseUser,
    fields: Mapping[str, Sequence[str]],
    idempotency_key: uuid.UUID | str | None,
    task_id: int | None = None,
    time_spent_ms: int = 0,
    source: str = "browser",
) -> tuple[Ranking, TaskClaim]:
    """Record the annotator's ranking for their claim; returns the ranking and the claim.

    The hot path of the whole studio, so it is two or three statements: read the claim (validation needs
    its shown order), then one statement that closes the claim *and* inserts the ranking (a data-modifying
    CTE — atomic on its own, so no BEGIN/COMMIT round trips), then, after commit and only when the task
    may have just received its K-th ranking, a conditional update that marks it complete. Deliberately not @transaction.atomic: a single statement needs no
    transaction, and inside a caller's transaction it joins it (with a savepoint) as usual.

    Nothing is written when anything is wrong; a repeat of the same idempotency key returns the ranking
    already recorded. Consensus is recomputed asynchronously after commit.
    """
    # Whose claim it is comes first: a caller who may not touch it learns nothing from how its form is wrong.
    claim = claim_for(claim_id=claim_id, annotator=annotator)
    if not isinstance(idempotency_key, uuid.UUID):
        idempotency_key = parse_idempotency_key(idempotency_key)
    if task_id is not None and task_id != claim.task_id:
        raise SubmissionInvalid(
            "This ranking names a different task than the one you were given; reload the page."
        )
    category = claim.task.prompt.category
    labels = ordering_from_positions(fields, n_images=len(claim.shown_order), allow_ties=category.allows_ties)
    try:
        ordering = validate_ordering(
            labels_to_image_ids(labels, claim.shown_order),
            items=claim.shown_order,
            allow_ties=category.allows_ties,
        )
    except OrderingError as exc:  # unreachable through the form parser; kept as the server's last word
        raise SubmissionInvalid(str(exc)) from exc
    now = timezone.now()
    spent = max(0, min(int(time_spent_ms), 2**31 - 1))
    guard = transaction.atomic() if connection.in_atomic_block else nullcontext()
    try:
        with guard, connection.cursor() as cursor:
            cursor.execute(
                _SUBMIT_SQL,
                {
                    **CLAIM_SUBMIT_PARAMS,
                    "claim": claim.pk,
                    "annotator": annotator.pk,
                    "now": now,
                    "ordering": json.dumps(ordering),
                    "shown": json.dumps(list(claim.shown_order)),
                    "spent": spent,
                    "key": idempotency_key,
                    "source": source,
                },
            )
            row = cursor.fetchone()
    except IntegrityError as exc:
        raise ClaimClosed("This ranking was already recorded (the same submission arrived twice).") from exc
    if row is None:
        return _resubmission(claim=claim, annotator=annotator, idempotency_key=idempotency_key), claim
    ranking = Ranking(
        pk=row[0],
        task_id=claim.task_id,
        annotator=annotator,
        ordering=ordering,
        shown_order=claim.shown_order,
        time_spent_ms=spent,
        idempotency_key=idempotency_key,
        source=source,
        created_at=now,
        updated_at=now,
    )
    task_pk, may_be_full = claim.task_id, bool(row[1])
    transaction.on_commit(lambda: _after_ranking(task_pk, may_be_full=may_be_full))
    return ranking, claim_mark_submitted(claim)


_SUBMIT_SQL = f"""
WITH closed AS (
    {CLAIM_SUBMIT_CTE}
), inserted AS (
    INSERT INTO {Ranking._meta.db_table}
        (task_id, annotator_id, ordering, shown_order, time_spent_ms, idempotency_key, source, created_at, updated_at)
    SELECT task_id, %(annotator)s, %(ordering)s::jsonb, %(shown)s::jsonb, %(spent)s, %(key)s, %(source)s,
           %(now)s, %(now)s
    FROM closed
    RETURNING id, task_id
)
SELECT i.id,
       (SELECT count(*) FROM {Ranking._meta.db_table} r WHERE r.task_id = i.task_id)
     + (SELECT count(*) FROM {TaskClaim._meta.db_table} c WHERE c.task_id = i.task_id AND c.status = %(claim_active)s)
     >= t.required_rankings
FROM inserted i JOIN {RankingTask._meta.db_table} t ON t.id = i.task_id
"""
# The last SELECT reads the statement's snapshot, where this submit's own claim still counts as active: so
# "rankings + active claims >= K" says the task may be full once every holder has submitted. The last of
# the final submitters always sees that (the others' rankings are committed, or their claims are still
# active in its snapshot), so only those submitters pay for the completion update after commit.


def _after_ranking(task_id: int, *, may_be_full: bool = True) -> None:
    """After commit: close a task that has its K rankings, then let the consensus engine recompute it.

    Done after commit on purpose: when the last two rankings of a task commit at the same moment, each
    transaction sees only its own, but the later of these statements starts after both commits and sees
    both — so the task is always closed, which a count inside either transaction could not promise.

    The ranking is already committed here, so a database that stops answering now must not turn the
    acknowledgement into an error page (the annotator would read "not saved" and rank again): the failure
    is logged and the consensus worker, which retries until the database answers, completes the task.
    """
    if may_be_full:
        try:
            task_complete_if_full(task_id=task_id)
        except DatabaseError:
            logger.warning(
                "task %s: completion after a committed ranking failed; left to the consensus worker",
                task_id,
                exc_info=True,
            )
    _schedule_consensus(task_id)


def _resubmission(*, claim: TaskClaim, annotator: AbstractBaseUser, idempotency_key: uuid.UUID) -> Ranking:
    """The conditional close touched nothing: a double submit, or a lease that is gone."""
    earlier = Ranking.objects.filter(idempotency_key=idempotency_key, annotator=annotator).first()
    if earlier is not None:
        return earlier
    fresh, task_status = TaskClaim.objects.filter(pk=claim.pk).values_list(
        "status", "task__status"
    ).first() or (None, None)
    if task_status == TaskStatus.RETIRED:
        raise ClaimClosed("An admin withdrew this task, so it no longer takes rankings. Go on with the next.")
    if fresh == ClaimStatus.SUBMITTED:
        raise ClaimClosed("You already submitted a ranking for this task.")
    if fresh == ClaimStatus.RELEASED:
        raise ClaimClosed("You skipped or flagged this task, so it can no longer be ranked by you.")
    raise LeaseExpired(
        f"Your hold on this task expired (tasks are held for {settings.TASK_LEASE_SECONDS // 60} minutes) and "
        "it went back into the queue, so this ranking was not recorded. Load the next task to go on."
    )


# --------------------------------------------------------------------------------------------------------
# Correcting one's last ranking
# --------------------------------------------------------------------------------------------------------


def correctable_ranking(*, annotator: AbstractBaseUser, now: datetime | None = None) -> Ranking | None:
    """The annotator's latest ranking when it is still inside the correction window."""
    now = now or timezone.now()
    last = Ranking.objects.filter(annotator=annotator).order_by("-created_at", "-id").first()
    if last is None or last.created_at < now - timedelta(seconds=CORRECTION_WINDOW_SECONDS):
        return None
    return last


@transaction.atomic
def ranking_correct(
    *, ranking_id: int, annotator: AbstractBaseUser, fields: Mapping[str, Sequence[str]]
) -> Ranking:
    """Replace the ordering of the annotator's own last ranking, within the correction window."""
    ranking = (
        Ranking.objects.select_for_update(of=("self",))
        .select_related("task__prompt__category")
        .filter(pk=ranking_id)
        .first()
    )
    if ranking is None or ranking.annotator_id != annotator.pk:
        raise ClaimNotYours("You can only correct your own rankings.")
    latest = correctable_ranking(annotator=annotator)
    if latest is None or latest.pk != ranking.pk:
        raise CorrectionRefused(
            f"Only your last ranking can be corrected, and only within {CORRECTION_WINDOW_SECONDS // 60} "
            "minutes of submitting it."
        )
    allow_ties = ranking.task.prompt.category.allows_ties
    shown = list(ranking.shown_order)
    labels = ordering_from_positions(fields, n_images=len(shown), allow_ties=allow_ties)
    ranking.ordering = validate_ordering(
        labels_to_image_ids(labels, shown), items=shown, allow_ties=allow_ties
    )
    ranking.save(update_fields=["ordering", "updated_at"])
    task_pk = ranking.task_id
    transaction.on_commit(lambda: _schedule_consensus(task_pk))
    return ranking
