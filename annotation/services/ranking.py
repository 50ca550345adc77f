"""Writes of the ranking experience: claiming task slots, submitting, skipping, flagging, correcting.

Slot accounting (the invariant every function here keeps): for each task,
``rankings + claims with status ACTIVE <= required_rankings``. A claim is inserted only while its
task row is locked (``SELECT … FOR NO KEY UPDATE``), after the claimer has counted the task's rankings and
active claims in a statement that started after the lock was taken, so two claimers never take the
same slot. Expired leases are turned into EXPIRED rows by the claimer (under the same lock, skipping
claim rows an in-flight submit has locked — those stay counted), and a submit only succeeds through a
conditional update ``ACTIVE and not expired -> SUBMITTED``; so a slot is either given back by expiry or
used by the submit, never both.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, F, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation.models import (
    ClaimStatus,
    FlagKind,
    Ranking,
    RankingTask,
    TaskClaim,
    TaskFlag,
    TaskImage,
    TaskStatus,
)
from annotation.services.consensus import consensus_schedule
from gallery.models import Category, Image, Prompt
from rankmath.rankformats import Ordering, OrderingError, validate_ordering

logger = logging.getLogger(__name__)

# How long an annotator may correct their own last ranking.
CORRECTION_WINDOW_SECONDS: int = getattr(settings, "RANKING_CORRECTION_SECONDS", 300)
# A claimer walks at most this many candidate tasks that turned out full before giving up for now.
_MAX_CANDIDATES = 50
MAX_TASK_IMAGES = 8
MAX_REASON_CHARS = 2000

_shuffler = random.SystemRandom()


# --------------------------------------------------------------------------------------------------------
# Errors: each carries the HTTP status the views answer with and a message fit to show the annotator.
# --------------------------------------------------------------------------------------------------------


class RankingRefused(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SubmissionInvalid(RankingRefused):
    status = 400


class ClaimNotYours(RankingRefused):
    status = 403


class ClaimNotFound(RankingRefused):
    status = 404


class LeaseExpired(RankingRefused):
    status = 409


class ClaimClosed(RankingRefused):
    """The claim was already submitted or given up (skip/flag)."""

    status = 409


class CorrectionRefused(RankingRefused):
    status = 409


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


# --------------------------------------------------------------------------------------------------------
# Claiming
# --------------------------------------------------------------------------------------------------------


def _lease() -> timedelta:
    return timedelta(seconds=settings.TASK_LEASE_SECONDS)


def _gold_turn(*, annotator: AbstractBaseUser, rate: float) -> bool:
    """Deterministic interleave: with rate r, claim number n is gold when floor(n*r) steps up.

    Deterministic rather than random so that a rate of 0.1 really means every tenth task, which the
    admins can verify and the tests can pin down.
    """
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    n = TaskClaim.objects.filter(annotator=annotator).count()
    return int((n + 1) * rate) > int(n * rate)


def _candidates(*, annotator: AbstractBaseUser, category_id: int, is_gold: bool, now: datetime):
    """Open tasks of the category this annotator never claimed or ranked, with (likely) a free slot.

    The free-slot filter only narrows the search; the exact count happens under the task's lock.
    """
    active_claims = TaskClaim.objects.filter(
        task=OuterRef("pk"), status=ClaimStatus.ACTIVE, expires_at__gt=now
    ).values("task")
    rankings = Ranking.objects.filter(task=OuterRef("pk")).values("task")
    return (
        RankingTask.objects.filter(status=TaskStatus.OPEN, is_gold=is_gold, prompt__category_id=category_id)
        .exclude(Exists(TaskClaim.objects.filter(task=OuterRef("pk"), annotator=annotator)))
        .exclude(Exists(Ranking.objects.filter(task=OuterRef("pk"), annotator=annotator)))
        .alias(
            n_active=_count_subquery(active_claims),
            n_ranked=_count_subquery(rankings),
        )
        .filter(n_active__lt=F("required_rankings") - F("n_ranked"))
        .order_by("id")
    )


def _count_subquery(qs: Any) -> Coalesce:
    counted = qs.annotate(c=Count("pk")).values("c")
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def _occupied_slots(task_id: int) -> int:
    """Rankings plus ACTIVE claims, counted in one statement so one snapshot sees a submit either
    before (active claim, no ranking) or after (ranking, submitted claim) — never both or neither."""
    row = (
        RankingTask.objects.filter(pk=task_id)
        .annotate(
            ranked=_count_subquery(Ranking.objects.filter(task=OuterRef("pk")).values("task")),
            active=_count_subquery(
                TaskClaim.objects.filter(task=OuterRef("pk"), status=ClaimStatus.ACTIVE).values("task")
            ),
        )
        .values("ranked", "active")
        .get()
    )
    return row["ranked"] + row["active"]


def _expire_stale_claims(task_id: int, now: datetime) -> None:
    # SKIP LOCKED: a claim row locked by an in-flight submit stays ACTIVE and counted; we never wait on it
    # while holding the task lock (that wait could deadlock with the submit's own task update).
    stale = list(
        TaskClaim.objects.filter(task_id=task_id, status=ClaimStatus.ACTIVE, expires_at__lte=now)
        .select_for_update(skip_locked=True)
        .values_list("pk", flat=True)
    )
    if stale:
        TaskClaim.objects.filter(pk__in=stale).update(status=ClaimStatus.EXPIRED)


def _try_claim(task: RankingTask, *, annotator: AbstractBaseUser, now: datetime) -> TaskClaim | None:
    """With the task row locked: recount, and insert the claim when a slot is free."""
    _expire_stale_claims(task.pk, now)
    if _occupied_slots(task.pk) >= task.required_rankings:
        return None
    image_ids = list(TaskImage.objects.filter(task=task).values_list("image_id", flat=True))
    _shuffler.shuffle(image_ids)
    try:
        with transaction.atomic():
            return TaskClaim.objects.create(
                task=task, annotator=annotator, shown_order=image_ids, expires_at=now + _lease()
            )
    except IntegrityError:
        # The same annotator claimed this task from another tab a moment ago.
        return None


def _claim_from_pool(*, annotator: AbstractBaseUser, category_id: int, is_gold: bool) -> TaskClaim | None:
    tried: list[int] = []
    for _ in range(_MAX_CANDIDATES):
        now = timezone.now()
        with transaction.atomic():
            pool = _candidates(
                annotator=annotator, category_id=category_id, is_gold=is_gold, now=now
            ).exclude(pk__in=tried)
            # NO KEY UPDATE: claimers exclude each other, but a submit's foreign-key check on the task
            # (KEY SHARE) never waits for a claimer.
            task = pool.select_for_update(skip_locked=True, of=("self",), no_key=True).first()
            if task is None:
                # Everything left may just be locked by other claimers this instant: wait for the first
                # one rather than report an empty queue (a claimer must never lose a task).
                task = pool.select_for_update(of=("self",), no_key=True).first()
                if task is None:
                    return None
            claim = _try_claim(task, annotator=annotator, now=timezone.now())
        if claim is not None:
            return claim
        tried.append(task.pk)
    logger.warning("claim gave up after %d full candidates in category %s", _MAX_CANDIDATES, category_id)
    return None


def task_claim_next(*, annotator: AbstractBaseUser, category: Category) -> TaskClaim | None:
    """Claim one slot of the next task of this category for the annotator, or None if none is left.

    Gold tasks are interleaved at settings.GOLD_TASK_RATE; when one pool is empty the other is used
    (gold only when the rate is above zero).
    """
    rate = settings.GOLD_TASK_RATE
    gold_first = _gold_turn(annotator=annotator, rate=rate)
    pools = [True, False] if gold_first else ([False, True] if rate > 0 else [False])
    for is_gold in pools:
        claim = _claim_from_pool(annotator=annotator, category_id=category.pk, is_gold=is_gold)
        if claim is not None:
            return claim
    return None


def _active_claims(*, annotator: AbstractBaseUser, category: Category, now: datetime) -> list[TaskClaim]:
    return list(
        TaskClaim.objects.filter(
            annotator=annotator,
            status=ClaimStatus.ACTIVE,
            expires_at__gt=now,
            task__prompt__category=category,
        )
        .select_related("task__prompt__category")
        .order_by("claimed_at", "id")[:2]
    )


@dataclass(frozen=True)
class ClaimPair:
    current: TaskClaim | None
    upcoming: TaskClaim | None


def task_claims_ensure(*, annotator: AbstractBaseUser, category: Category) -> ClaimPair:
    """The task to show now and the one after it (held too, so its images can be prefetched).

    The current claim's lease is renewed: it counts from when the annotator sees the task, not from when
    it was reserved as the upcoming one.
    """
    now = timezone.now()
    claims = _active_claims(annotator=annotator, category=category, now=now)
    while len(claims) < 2:
        claim = task_claim_next(annotator=annotator, category=category)
        if claim is None:
            break
        claims.append(claim)
    if not claims:
        return ClaimPair(current=None, upcoming=None)
    current = claims[0]
    claim_renew(claim=current)
    return ClaimPair(current=current, upcoming=claims[1] if len(claims) > 1 else None)


def claim_renew(*, claim: TaskClaim) -> bool:
    """Extend an active, unexpired lease; False when it has already lapsed (the slot may be gone)."""
    now = timezone.now()
    new_expiry = now + _lease()
    updated = TaskClaim.objects.filter(pk=claim.pk, status=ClaimStatus.ACTIVE, expires_at__gt=now).update(
        expires_at=new_expiry
    )
    if updated:
        claim.expires_at = new_expiry
    return bool(updated)


# --------------------------------------------------------------------------------------------------------
# Submitting
# --------------------------------------------------------------------------------------------------------


def _schedule_consensus(task_id: int) -> None:
    """Let the consensus engine recompute this task in a worker (it owns consensus and pairs)."""
    consensus_schedule(task_id=task_id)


_CLAIM_SQL = f"""
SELECT c.id, c.annotator_id, c.status, c.shown_order, c.expires_at, c.claimed_at, c.task_id,
       t.required_rankings, t.prompt_id, p.category_id, g.slug, g.allows_ties
FROM {TaskClaim._meta.db_table} c
JOIN {RankingTask._meta.db_table} t ON t.id = c.task_id
JOIN {Prompt._meta.db_table} p ON p.id = t.prompt_id
JOIN {Category._meta.db_table} g ON g.id = p.category_id
WHERE c.id = %s
"""


def _claim_for(*, claim_id: int, annotator: AbstractBaseUser) -> TaskClaim:
    """The claim with what validation needs (its task's category). One hand-written query: on the submit
    path the ORM's query compilation cost more CPU than the database took to answer."""
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, [claim_id])
        row = cursor.fetchone()
    if row is None:
        raise ClaimNotFound("This task is no longer assigned to anyone. Load the next task.")
    (
        cid,
        annotator_id,
        status,
        shown,
        expires_at,
        claimed_at,
        task_id,
        required,
        prompt_id,
        cat_id,
        slug,
        ties,
    ) = row
    if annotator_id != annotator.pk:
        raise ClaimNotYours("This task is assigned to another annotator; you cannot submit a ranking for it.")
    category = Category(id=cat_id, slug=slug, allows_ties=ties)
    task = RankingTask(id=task_id, required_rankings=required, prompt=Prompt(id=prompt_id, category=category))
    claim = TaskClaim(
        id=cid,
        task=task,
        annotator_id=annotator_id,
        status=status,
        shown_order=json.loads(shown) if isinstance(shown, str) else shown,
        expires_at=expires_at,
        claimed_at=claimed_at,
    )
    return claim


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
    claim = _claim_for(claim_id=claim_id, annotator=annotator)
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
                    "claim": claim.pk,
                    "annotator": annotator.pk,
                    "now": now,
                    "active": ClaimStatus.ACTIVE,
                    "submitted": ClaimStatus.SUBMITTED,
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
    claim.status = ClaimStatus.SUBMITTED
    return ranking, claim


_SUBMIT_SQL = f"""
WITH closed AS (
    UPDATE {TaskClaim._meta.db_table} SET status = %(submitted)s
    WHERE id = %(claim)s AND annotator_id = %(annotator)s AND status = %(active)s AND expires_at > %(now)s
    RETURNING task_id
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
     + (SELECT count(*) FROM {TaskClaim._meta.db_table} c WHERE c.task_id = i.task_id AND c.status = %(active)s)
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
    """
    if may_be_full:
        ranked = Ranking.objects.filter(task_id=OuterRef("pk")).values("task")
        RankingTask.objects.filter(pk=task_id, status=TaskStatus.OPEN).filter(
            required_rankings__lte=_count_subquery(ranked)
        ).update(status=TaskStatus.COMPLETE)
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
# Skip, flag, correct
# --------------------------------------------------------------------------------------------------------


@transaction.atomic
def task_release(*, claim_id: int, annotator: AbstractBaseUser, kind: str, reason: str = "") -> TaskFlag:
    """Skip or flag: give the slot back to the queue and put the task in the admins' review queue.

    The annotator will not be offered this task again (their claim row stays, as RELEASED).
    """
    claim = _claim_for(claim_id=claim_id, annotator=annotator)
    if kind not in FlagKind.values:
        raise SubmissionInvalid(f"Unknown action {kind!r}.")
    reason = reason.strip()
    if kind == FlagKind.FLAG and not reason:
        raise SubmissionInvalid("Say what is wrong with this task so an admin can fix it.")
    if len(reason) > MAX_REASON_CHARS:
        raise SubmissionInvalid(f"Keep the reason under {MAX_REASON_CHARS} characters.")
    # An expired claim can still be flagged (the problem is real); a submitted one cannot be skipped.
    released = TaskClaim.objects.filter(
        pk=claim.pk, status__in=[ClaimStatus.ACTIVE, ClaimStatus.EXPIRED]
    ).update(status=ClaimStatus.RELEASED)
    if not released:
        raise ClaimClosed("This task is already done or given up.")
    return TaskFlag.objects.create(task_id=claim.task_id, annotator=annotator, kind=kind, reason=reason)


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


# --------------------------------------------------------------------------------------------------------
# Quality control: gold tasks and the review queue
# --------------------------------------------------------------------------------------------------------


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
    )
    TaskImage.objects.bulk_create(
        TaskImage(task=task, image_id=image_id, position=i) for i, image_id in enumerate(image_ids)
    )
    logger.info("gold task %s created by %s for prompt %s", task.pk, created_by.pk, prompt.pk)
    return task


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
        RankingTask.objects.filter(pk=flag.task_id).update(status=TaskStatus.RETIRED)
        # Holders of the task can no longer submit; their page tells them it was withdrawn.
        TaskClaim.objects.filter(task_id=flag.task_id, status=ClaimStatus.ACTIVE).update(
            status=ClaimStatus.EXPIRED
        )
    return flag


def parse_idempotency_key(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError) as exc:
        raise SubmissionInvalid("The form is missing its submission key; reload the page.") from exc
