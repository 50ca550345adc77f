"""Claims: an annotator's lease on one ranking slot of a task. Claiming the next task, renewing and expiring
leases, giving a slot back — and the one writer of ``TaskClaim.status``.

Slot accounting (the invariant every write here keeps): for each task,
``rankings + claims with status ACTIVE <= required_rankings``. A claim is inserted only while its
task row is locked (``SELECT … FOR NO KEY UPDATE``), after the claimer has counted the task's rankings and
active claims in a statement that started after the lock was taken, so two claimers never take the
same slot. Expired leases are turned into EXPIRED rows by the claimer (under the same lock, skipping
claim rows an in-flight submit has locked — those stay counted), and a submit only succeeds through a
conditional update ``ACTIVE and not expired -> SUBMITTED``; so a slot is either given back by expiry or
used by the submit, never both.

Claim status transitions (a claim is created ``active``)::

    active           -> submitted  its ranking was recorded (CLAIM_SUBMIT_CTE, inside the submit statement)
    active           -> expired    its lease lapsed, or an admin retired its task
    active, expired  -> released   the annotator skipped or flagged the task
    released         -> active     the annotator undid a skip within seconds, while a slot was still free

``tests/annotation_ui/test_status_writers.py`` fails when another module writes ``TaskClaim.status``.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from annotation.models import ClaimStatus, Ranking, RankingTask, TaskClaim, TaskImage, TaskStatus
from annotation.services.refusals import ClaimNotFound, ClaimNotYours
from annotation.services.subqueries import count_subquery
from gallery.models import Category, Prompt

logger = logging.getLogger(__name__)

# A claimer walks at most this many candidate tasks that turned out full before giving up for now.
_MAX_CANDIDATES = 50

_shuffler = random.SystemRandom()


def _lease() -> timedelta:
    return timedelta(seconds=settings.TASK_LEASE_SECONDS)


# --------------------------------------------------------------------------------------------------------
# Claiming the next task
# --------------------------------------------------------------------------------------------------------


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


def claimable_tasks(
    *,
    annotator: AbstractBaseUser,
    now: datetime,
    category_id: int | None = None,
    is_gold: bool | None = None,
    first_only: bool = False,
):
    """Open tasks this annotator never claimed or ranked, with (likely) a free slot: what a claim can take.

    The free-slot filter only narrows the search; the exact count happens under the task's lock. The queue
    pages count this same query (``is_gold=None``: the pools ``task_claim_next`` draws from), so the
    number shown is the number a claimer can take.

    ``first_only``: the caller reads the first row in claim order and stops (the claimer). The same rows, but
    "never claimed or ranked by this annotator" is then written as scalar counts, which PostgreSQL checks
    row by row with one probe of the (task, annotator) unique indexes; as ``NOT EXISTS`` it plans an
    anti-join or a hashed subplan over the annotator's whole history, which grows with the gallery
    (BENCHMARKS.md, "Claim path at scale"). A count of all rows (the queue pages) keeps the anti-join,
    which is the cheaper plan when every row is read.
    """
    active_claims = TaskClaim.objects.filter(
        task=OuterRef("pk"), status=ClaimStatus.ACTIVE, expires_at__gt=now
    ).values("task")
    rankings = Ranking.objects.filter(task=OuterRef("pk")).values("task")
    # status = open is the condition of the partial indexes task_open_queue (is_gold, -priority, id) and
    # task_open_queue_gold_first (-is_gold, -priority, id): the claimer walks open tasks in claim order
    # without stepping over the complete ones in front of them.
    qs = RankingTask.objects.filter(status=TaskStatus.OPEN)
    if category_id is not None:
        qs = qs.filter(prompt__category_id=category_id)
    if is_gold is not None:
        qs = qs.filter(is_gold=is_gold)
    elif settings.GOLD_TASK_RATE <= 0:
        qs = qs.filter(is_gold=False)
    my_claims = TaskClaim.objects.filter(task=OuterRef("pk"), annotator=annotator)
    my_rankings = Ranking.objects.filter(task=OuterRef("pk"), annotator=annotator)
    if first_only:
        # "< 1", not "= 0" (the same for a count): PostgreSQL estimates an equality on an expression at
        # 0.5 % of rows, and with so few rows expected it reads the whole category and sorts it instead of
        # walking task_open_queue in claim order (measured: 10 ms against 0.3 ms at 10,000 images).
        qs = qs.alias(
            n_mine=count_subquery(my_claims.values("task")) + count_subquery(my_rankings.values("task"))
        ).filter(n_mine__lt=1)
    else:
        qs = qs.exclude(Exists(my_claims)).exclude(Exists(my_rankings))
    return (
        qs.alias(
            n_active=count_subquery(active_claims),
            n_ranked=count_subquery(rankings),
        )
        .filter(n_active__lt=F("required_rankings") - F("n_ranked"))
        # The category's selection policy, precomputed into an indexed column (services/selection.py).
        .order_by("-priority", "id")
    )


def _occupied_slots(task_id: int) -> int:
    """Rankings plus ACTIVE claims, counted in one statement so one snapshot sees a submit either
    before (active claim, no ranking) or after (ranking, submitted claim) — never both or neither."""
    row = (
        RankingTask.objects.filter(pk=task_id)
        .annotate(
            ranked=count_subquery(Ranking.objects.filter(task=OuterRef("pk")).values("task")),
            active=count_subquery(
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


def _claim_order(*, gold_first: bool) -> tuple[str, str, str]:
    """Both pools in one walk, the preferred one first. Each order is an index's order: is_gold ascending
    is task_open_queue, descending task_open_queue_gold_first; so a gold turn with no gold left goes on to
    the ordinary pool inside the same statement (BENCHMARKS.md, "Claim path at scale")."""
    return ("-is_gold" if gold_first else "is_gold", "-priority", "id")


def _claim_from_pools(
    *, annotator: AbstractBaseUser, category_id: int, gold: bool | None, gold_first: bool
) -> TaskClaim | None:
    """``gold``: None draws from both pools (gold first when ``gold_first``), False from the ordinary one."""
    tried: list[int] = []
    for _ in range(_MAX_CANDIDATES):
        now = timezone.now()
        with transaction.atomic():
            pool = (
                claimable_tasks(
                    annotator=annotator, category_id=category_id, is_gold=gold, now=now, first_only=True
                )
                .exclude(pk__in=tried)
                .order_by(*_claim_order(gold_first=gold_first))
            )
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
    (gold only when the rate is above zero). One draw walks both pools in the turn's order: a gold turn of
    an annotator who has ranked every gold task costs no second transaction.
    """
    rate = settings.GOLD_TASK_RATE
    gold_first = _gold_turn(annotator=annotator, rate=rate)
    return _claim_from_pools(
        annotator=annotator,
        category_id=category.pk,
        gold=None if rate > 0 else False,
        gold_first=gold_first,
    )


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
# Reading one claim for a write (submit, skip, flag)
# --------------------------------------------------------------------------------------------------------

_CLAIM_SQL = f"""
SELECT c.id, c.annotator_id, c.status, c.shown_order, c.expires_at, c.claimed_at, c.task_id,
       t.required_rankings, t.prompt_id, p.category_id, g.slug, g.allows_ties
FROM {TaskClaim._meta.db_table} c
JOIN {RankingTask._meta.db_table} t ON t.id = c.task_id
JOIN {Prompt._meta.db_table} p ON p.id = t.prompt_id
JOIN {Category._meta.db_table} g ON g.id = p.category_id
WHERE c.id = %s
"""


def claim_for(*, claim_id: int, annotator: AbstractBaseUser) -> TaskClaim:
    """The annotator's claim with what validation needs (its task's category), or a refusal.

    One hand-written query: on the submit path the ORM's query compilation cost more CPU than the database
    took to answer.
    """
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


# --------------------------------------------------------------------------------------------------------
# Closing claims
# --------------------------------------------------------------------------------------------------------

# The claim's side of a submit, as a data-modifying CTE the submit statement builds on (it inserts the
# ranking from this CTE's RETURNING row, so closing the claim and recording its ranking are one statement).
# Parameters: %(claim)s, %(annotator)s, %(now)s and CLAIM_SUBMIT_PARAMS.
CLAIM_SUBMIT_CTE = f"""UPDATE {TaskClaim._meta.db_table} SET status = %(claim_submitted)s
    WHERE id = %(claim)s AND annotator_id = %(annotator)s AND status = %(claim_active)s AND expires_at > %(now)s
    RETURNING task_id"""
CLAIM_SUBMIT_PARAMS: dict[str, str] = {
    "claim_active": ClaimStatus.ACTIVE,
    "claim_submitted": ClaimStatus.SUBMITTED,
}


def claim_mark_submitted(claim: TaskClaim) -> TaskClaim:
    """Bring an in-memory claim up to date once the submit statement closed it (no query)."""
    claim.status = ClaimStatus.SUBMITTED
    return claim


def claim_release(*, claim_id: int) -> bool:
    """Give the slot back after a skip or flag; False when the claim was already submitted or released.

    An expired claim can still be released (a flag on it is still worth reading); the claim row stays, as
    RELEASED, so the annotator is not offered the task again.
    """
    return bool(
        TaskClaim.objects.filter(pk=claim_id, status__in=[ClaimStatus.ACTIVE, ClaimStatus.EXPIRED]).update(
            status=ClaimStatus.RELEASED
        )
    )


def claims_expire_for_task(*, task_id: int) -> int:
    """End every active lease on a task that was withdrawn; its holders can no longer submit."""
    return TaskClaim.objects.filter(task_id=task_id, status=ClaimStatus.ACTIVE).update(
        status=ClaimStatus.EXPIRED
    )


@transaction.atomic
def claim_reinstate(*, claim_id: int, now: datetime | None = None) -> bool:
    """Undo of a skip: the released claim is active again, with a fresh lease, if its task still has a free
    slot; False when someone else took the slot (or the task closed) in the meantime.

    Under the task's lock and recounted like a new claim (``_try_claim``), so the slot invariant holds.
    """
    now = now or timezone.now()
    claim = TaskClaim.objects.filter(pk=claim_id, status=ClaimStatus.RELEASED).first()
    if claim is None:
        return False
    task = (
        RankingTask.objects.select_for_update(of=("self",), no_key=True)
        .filter(pk=claim.task_id, status=TaskStatus.OPEN)
        .first()
    )
    if task is None:
        return False
    _expire_stale_claims(task.pk, now)
    if _occupied_slots(task.pk) >= task.required_rankings:
        return False
    return bool(
        TaskClaim.objects.filter(pk=claim_id, status=ClaimStatus.RELEASED).update(
            status=ClaimStatus.ACTIVE, expires_at=now + _lease()
        )
    )
