"""Reads of the ranking experience: what the annotator's page shows, queues, review and quality tables.

Nothing here writes. Annotator-facing reads never expose generator names or image ids: images are
addressed by their label in the annotator's shown order (1..N) and by content-addressed URLs.
"""

from __future__ import annotations

import logging
import statistics
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Exists, Max, OuterRef, Q, QuerySet
from django.urls import NoReverseMatch
from django.utils import timezone

from annotation import selectors_research as research
from annotation.models import (
    AnnotatorProfile,
    CategorySelection,
    ClaimStatus,
    Ranking,
    RankingTask,
    Role,
    SelectionPolicy,
    TaskClaim,
    TaskFlag,
    TaskStatus,
)
from annotation.services.claims import claimable_tasks
from annotation.services.review import SKIP_UNDO_SECONDS, skip_undoable
from annotation.services.selection import DEFAULT_RANDOM_SHARE
from annotation.services.submission import CORRECTION_WINDOW_SECONDS, positions_from_ordering
from gallery.models import Category, Image, Prompt

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------
# Images as the annotator sees them
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShownImage:
    label: int  # 1..N in this annotator's shown order; also the keyboard key
    url: str
    width: int
    height: int
    alt: str
    rank: int | None = None  # pre-filled rank (after a refused submission, or when correcting)
    pixelated: bool = False
    # The original file (content-addressed, blind too) at its natural size, for the zoom and compare views.
    full_url: str = ""
    full_width: int = 0
    full_height: int = 0


def _display(image: Image, *, alt: str) -> tuple[str, int, int, bool, str]:
    """URL and size from the gallery's display selector (derivative, content-addressed, blind)."""
    try:
        from gallery.selectors import image_display

        shown = image_display(image, alt=alt)
        return shown.url, shown.width, shown.height, shown.pixelated, shown.original_url
    except (ImportError, NoReverseMatch):  # the gallery's file route is being built alongside
        return image.file.url, image.width, image.height, False, image.file.url


def shown_images(
    shown_order: list[int], *, ranks: dict[int, int] | None = None, images: dict[int, Image] | None = None
) -> list[ShownImage]:
    if images is None:
        images = Image.objects.in_bulk(shown_order)
    n = len(shown_order)
    result = []
    for i, image_id in enumerate(shown_order, start=1):
        image = images[image_id]
        alt = f"Candidate image {i} of {n}"
        url, width, height, pixelated, full_url = _display(image, alt=alt)
        result.append(
            ShownImage(
                label=i,
                url=url,
                width=width,
                height=height,
                alt=alt,
                rank=(ranks or {}).get(i),
                pixelated=pixelated,
                full_url=full_url,
                full_width=image.width,
                full_height=image.height,
            )
        )
    return result


# --------------------------------------------------------------------------------------------------------
# The ranking page
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    done_today: int
    done_total: int
    remaining_in_category: int


def progress_for(*, annotator: AbstractBaseUser, category: Category, now: datetime | None = None) -> Progress:
    now = now or timezone.now()
    midnight = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    counts = Ranking.objects.filter(annotator=annotator).aggregate(
        today=Count("pk", filter=Q(created_at__gte=midnight)), total=Count("pk")
    )
    return Progress(
        done_today=counts["today"],
        done_total=counts["total"],
        remaining_in_category=_rankable_counts(annotator=annotator, now=now).get(category.pk, 0),
    )


def _rankable_counts(*, annotator: AbstractBaseUser, now: datetime) -> dict[int, int]:
    """Per category id: the tasks this annotator holds a live lease on plus those a claim can take now.

    The same query the claimer draws from (``claimable_tasks``), so the number is what the annotator will
    actually be given — not tasks whose free slots other annotators hold.
    """
    counts: dict[int, int] = {}
    claimable = (
        claimable_tasks(annotator=annotator, now=now)
        .order_by()
        .values("prompt__category")
        .annotate(n=Count("pk"))
        .values_list("prompt__category", "n")
    )
    held = (
        TaskClaim.objects.filter(annotator=annotator, status=ClaimStatus.ACTIVE, expires_at__gt=now)
        .values("task__prompt__category")
        .annotate(n=Count("pk"))
        .values_list("task__prompt__category", "n")
    )
    for category_id, n in [*claimable, *held]:
        counts[category_id] = counts.get(category_id, 0) + n
    return counts


@dataclass
class RankingPage:
    category: Category
    claim: TaskClaim | None
    prompt: Prompt | None
    images: list[ShownImage]
    upcoming_urls: list[str]
    progress: Progress
    idempotency_key: str
    shown_at_ms: int
    correctable: Ranking | None = None
    correctable_until: datetime | None = None
    error: str | None = None
    allows_ties: bool = False
    keys: list[int] = field(default_factory=list)
    # Confirmations of what the annotator just did: a skip they may still undo, or a flag sent.
    skipped: TaskFlag | None = None
    undo_until_ms: int = 0
    flagged: bool = False


def _undoable_skip(*, annotator: AbstractBaseUser, flag_id: int | None, now: datetime) -> TaskFlag | None:
    if not flag_id:
        return None
    flag = TaskFlag.objects.filter(pk=flag_id, annotator=annotator).first()
    return flag if flag is not None and skip_undoable(flag=flag, annotator=annotator, now=now) else None


def ranking_page(
    *,
    annotator: AbstractBaseUser,
    category: Category,
    claim: TaskClaim | None,
    upcoming: TaskClaim | None,
    ranks: dict[int, int] | None = None,
    error: str | None = None,
    idempotency_key: str | None = None,
    shown_at_ms: int | None = None,
    skipped_flag_id: int | None = None,
    flagged: bool = False,
) -> RankingPage:
    now = timezone.now()
    skipped = _undoable_skip(annotator=annotator, flag_id=skipped_flag_id, now=now)
    wanted = list(claim.shown_order if claim else []) + list(upcoming.shown_order if upcoming else [])
    images = Image.objects.in_bulk(wanted) if wanted else {}
    shown = shown_images(list(claim.shown_order), ranks=ranks, images=images) if claim else []
    upcoming_urls = (
        [img.url for img in shown_images(list(upcoming.shown_order), images=images)] if upcoming else []
    )
    correctable = _correctable(annotator=annotator, now=now)
    return RankingPage(
        category=category,
        claim=claim,
        prompt=claim.task.prompt if claim else None,
        images=shown,
        upcoming_urls=upcoming_urls,
        progress=progress_for(annotator=annotator, category=category, now=now),
        idempotency_key=idempotency_key or str(uuid.uuid4()),
        shown_at_ms=shown_at_ms or int(now.timestamp() * 1000),
        correctable=correctable,
        correctable_until=(
            correctable.created_at + timedelta(seconds=CORRECTION_WINDOW_SECONDS) if correctable else None
        ),
        error=error,
        allows_ties=category.allows_ties,
        keys=list(range(1, len(shown) + 1)),
        skipped=skipped,
        undo_until_ms=(
            int((skipped.created_at + timedelta(seconds=SKIP_UNDO_SECONDS)).timestamp() * 1000)
            if skipped
            else 0
        ),
        flagged=flagged,
    )


def _correctable(*, annotator: AbstractBaseUser, now: datetime) -> Ranking | None:
    last = (
        Ranking.objects.filter(annotator=annotator)
        .select_related("task__prompt__category")
        .order_by("-created_at", "-id")
        .first()
    )
    if last is None or last.created_at < now - timedelta(seconds=CORRECTION_WINDOW_SECONDS):
        return None
    return last


def claim_for_page(*, claim_id: int) -> TaskClaim | None:
    return TaskClaim.objects.select_related("task__prompt__category").filter(pk=claim_id).first()


@dataclass
class CorrectionPage:
    ranking: Ranking
    category: Category
    prompt: Prompt
    images: list[ShownImage]
    until: datetime
    error: str | None = None
    allows_ties: bool = False
    keys: list[int] = field(default_factory=list)


def correction_page(
    *, ranking: Ranking, ranks: dict[int, int] | None = None, error: str | None = None
) -> CorrectionPage:
    shown = list(ranking.shown_order)
    if ranks is None:
        ranks = positions_from_ordering(ranking.ordering, shown)
    category = ranking.task.prompt.category
    images = shown_images(shown, ranks=ranks)
    return CorrectionPage(
        ranking=ranking,
        category=category,
        prompt=ranking.task.prompt,
        images=images,
        until=ranking.created_at + timedelta(seconds=CORRECTION_WINDOW_SECONDS),
        error=error,
        allows_ties=category.allows_ties,
        keys=list(range(1, len(images) + 1)),
    )


def ranking_of(*, ranking_id: int) -> Ranking | None:
    return Ranking.objects.select_related("task__prompt__category").filter(pk=ranking_id).first()


# --------------------------------------------------------------------------------------------------------
# Queues
# --------------------------------------------------------------------------------------------------------


def queue_overview(*, annotator: AbstractBaseUser) -> list[dict[str, Any]]:
    """Per category: tasks waiting for this annotator and how many they ranked there."""
    waiting = _rankable_counts(annotator=annotator, now=timezone.now())
    done = dict(
        Ranking.objects.filter(annotator=annotator)
        .values("task__prompt__category")
        .annotate(n=Count("pk"))
        .values_list("task__prompt__category", "n")
    )
    return [
        {"category": c, "waiting": waiting.get(c.pk, 0), "done": done.get(c.pk, 0)}
        for c in Category.objects.order_by("position", "slug")
    ]


def category_by_slug(slug: str) -> Category | None:
    return Category.objects.filter(slug=slug).first()


# --------------------------------------------------------------------------------------------------------
# Admin: review queue, quality, accounts, gold tasks
# --------------------------------------------------------------------------------------------------------


def review_queue(*, show_resolved: bool = False) -> QuerySet[TaskFlag]:
    qs = TaskFlag.objects.select_related("task__prompt__category", "annotator", "resolved_by")
    if not show_resolved:
        qs = qs.filter(resolved_at__isnull=True)
    return qs.order_by("-created_at", "-id")


def review_counts() -> dict[str, int]:
    return TaskFlag.objects.filter(resolved_at__isnull=True).aggregate(
        open=Count("pk"),
        flags=Count("pk", filter=Q(kind="flag")),
        skips=Count("pk", filter=Q(kind="skip")),
    )


@dataclass(frozen=True)
class AnnotatorActivity:
    user_id: int
    username: str
    role: str
    weight: float
    rankings: int
    today: int
    median_seconds: float | None
    skips: int
    flags: int
    gold_tasks: int | None = None
    gold_tau: float | None = None
    shared_tasks: int | None = None
    loo_tau: float | None = None


def annotator_activity() -> list[AnnotatorActivity]:
    """Per annotator: output, speed and skips, joined with the consensus engine's agreement figures."""
    now = timezone.now()
    midnight = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    users = (
        get_user_model()
        .objects.filter(profile__role__in=[Role.ANNOTATOR, Role.ADMIN])
        .select_related("profile")
        .annotate(
            n_rankings=Count("rankings", distinct=True),
            n_today=Count("rankings", filter=Q(rankings__created_at__gte=midnight), distinct=True),
            n_skips=Count("flags", filter=Q(flags__kind="skip"), distinct=True),
            n_flags=Count("flags", filter=Q(flags__kind="flag"), distinct=True),
        )
        .order_by("username")
    )
    times: dict[int, list[int]] = {}
    for annotator_id, ms in Ranking.objects.filter(time_spent_ms__gt=0).values_list(
        "annotator_id", "time_spent_ms"
    ):
        times.setdefault(annotator_id, []).append(ms)
    agreement = {row["user_id"]: row for row in _agreement_rows()}
    rows = []
    for user in users:
        a = agreement.get(user.pk, {})
        spent = times.get(user.pk)
        rows.append(
            AnnotatorActivity(
                user_id=user.pk,
                username=user.username,
                role=user.profile.role,
                weight=user.profile.weight,
                rankings=user.n_rankings,
                today=user.n_today,
                median_seconds=statistics.median(spent) / 1000 if spent else None,
                skips=user.n_skips,
                flags=user.n_flags,
                gold_tasks=a.get("gold_tasks"),
                gold_tau=a.get("gold_tau"),
                shared_tasks=a.get("shared_tasks"),
                loo_tau=a.get("loo_tau"),
            )
        )
    return rows


def _agreement_rows() -> list[dict[str, Any]]:
    return research.annotator_agreement()


def agreement_by_category() -> list[dict[str, Any]]:
    """Kendall's W, pairwise tau and Krippendorff's alpha per category (the consensus engine's figures)."""
    return research.agreement_by_category()


def gold_tasks() -> QuerySet[RankingTask]:
    return (
        RankingTask.objects.filter(is_gold=True)
        .select_related("prompt__category")
        .annotate(n_rankings=Count("rankings"))
        .order_by("-id")
    )


def gold_prompt_choices(
    *, category: Category | None = None, query: str = "", limit: int = 50
) -> QuerySet[Prompt]:
    """Prompts with at least two images, newest first, to build a gold task from."""
    qs = Prompt.objects.select_related("category").annotate(n_images=Count("images")).filter(n_images__gte=2)
    if category is not None:
        qs = qs.filter(category=category)
    if query:
        qs = qs.filter(text__icontains=query)
    return qs.order_by("-id")[:limit]


def accounts() -> QuerySet:
    return (
        get_user_model()
        .objects.select_related("profile")
        .filter(Exists(AnnotatorProfile.objects.filter(user=OuterRef("pk"))))
        .annotate(n_rankings=Count("rankings"))
        .order_by("profile__role", "username")
    )


# --------------------------------------------------------------------------------------------------------
# Active selection (admins: /quality/)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CategorySelectionRow:
    category: Category
    policy: str
    random_share: float
    open_tasks: int
    scored_tasks: int
    last_scored: datetime | None


def selection_overview() -> list[CategorySelectionRow]:
    """Each category's task-priority policy, and how many of its open tasks the worker has scored."""
    chosen = {row.category_id: row for row in CategorySelection.objects.all()}
    counts = {
        row["prompt__category_id"]: row
        for row in RankingTask.objects.filter(status=TaskStatus.OPEN, is_gold=False)
        .values("prompt__category_id")
        .annotate(
            open=Count("id"),
            scored=Count("id", filter=Q(scored_at__isnull=False)),
            last=Max("scored_at"),
        )
    }
    rows = []
    for category in Category.objects.order_by("position"):
        policy = chosen.get(category.pk)
        count = counts.get(category.pk, {})
        rows.append(
            CategorySelectionRow(
                category=category,
                policy=policy.policy if policy else SelectionPolicy.RANDOM.value,
                random_share=policy.random_share if policy else DEFAULT_RANDOM_SHARE,
                open_tasks=count.get("open", 0),
                scored_tasks=count.get("scored", 0),
                last_scored=count.get("last"),
            )
        )
    return rows
