"""Reads for researchers and admins: agreement figures, first places, pair counts and export selections."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Avg, Count, Exists, OuterRef, Q, QuerySet

from annotation.exporters.filters import ExportFilters
from annotation.models import (
    ConsensusRanking,
    DatasetSnapshot,
    ExportJob,
    PreferencePair,
    Ranking,
    RankingTask,
    TaskImage,
)
from annotation.roles import is_admin
from gallery.models import Category, Image
from rankmath.agreement import (
    AnnotatedTask,
    krippendorff_alpha_by_category,
    leave_one_out_tau,
    mean_pairwise_tau,
    tau_against_reference,
)
from rankmath.rankformats import OrderingError, normalize_ordering

# --------------------------------------------------------------------------------------------------------
# Rankings grouped by task
# --------------------------------------------------------------------------------------------------------


@dataclass
class TaskRankings:
    task_id: int
    category: str
    is_gold: bool
    gold_ordering: list | None
    annotators: list[int] = field(default_factory=list)
    orderings: list[list[list[int]]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def task_rankings(category: str | None = None) -> Iterator[TaskRankings]:
    """Every task's rankings (annotator, ordering, weight), one task at a time, in task order."""
    rows = Ranking.objects.order_by("task_id", "id").values_list(
        "task_id",
        "task__prompt__category__slug",
        "task__is_gold",
        "task__gold_ordering",
        "annotator_id",
        "ordering",
        "annotator__profile__weight",
    )
    if category:
        rows = rows.filter(task__prompt__category__slug=category)
    current: TaskRankings | None = None
    for task_id, slug, is_gold, gold, annotator_id, ordering, weight in rows.iterator(chunk_size=2000):
        if current is None or current.task_id != task_id:
            if current is not None:
                yield current
            current = TaskRankings(task_id=task_id, category=slug, is_gold=is_gold, gold_ordering=gold)
        current.annotators.append(annotator_id)
        current.orderings.append(normalize_ordering(ordering))
        current.weights.append(1.0 if weight is None else float(weight))
    if current is not None:
        yield current


def _mean(values: list[float]) -> float | None:
    defined = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(defined)) if defined else None


# --------------------------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------------------------


@dataclass
class AnnotatorTaus:
    loo: list[float] = field(default_factory=list)
    gold: list[float] = field(default_factory=list)


def annotator_taus() -> dict[int, AnnotatorTaus]:
    """Per annotator: tau-b against the leave-one-out weighted consensus of each task they shared with
    others, and tau-b against the reference of each gold task they ranked."""
    result: dict[int, AnnotatorTaus] = defaultdict(AnnotatorTaus)
    for task in task_rankings():
        if task.is_gold and task.gold_ordering:
            for annotator, ordering in zip(task.annotators, task.orderings, strict=True):
                try:
                    result[annotator].gold.append(tau_against_reference(ordering, task.gold_ordering))
                except OrderingError:
                    continue
        if len(task.orderings) >= 2 and sum(task.weights) > 0:
            try:
                taus = leave_one_out_tau(task.orderings, task.weights, method=settings.CONSENSUS_METHOD)
            except (OrderingError, ValueError):
                continue  # rankings over different image sets: no shared consensus to compare with
            for annotator, tau in zip(task.annotators, taus, strict=True):
                result[annotator].loo.append(tau)
    return dict(result)


def agreement_by_category() -> list[dict[str, object]]:
    """Per category: Kendall's W (mean over tasks), mean pairwise tau-b, ordinal Krippendorff's alpha,
    and how many tasks, rankings and pairs stand behind them."""
    tasks_by_category: dict[str, list[AnnotatedTask]] = defaultdict(list)
    taus_by_category: dict[str, list[float]] = defaultdict(list)
    rankings_by_category: Counter[str] = Counter()
    for task in task_rankings():
        rankings_by_category[task.category] += len(task.orderings)
        tasks_by_category[task.category].append(
            AnnotatedTask(
                task_id=task.task_id,
                category=task.category,
                rankings=dict(zip(task.annotators, task.orderings, strict=True)),
            )
        )
        if len(task.orderings) >= 2:
            try:
                taus_by_category[task.category].append(mean_pairwise_tau(task.orderings))
            except OrderingError:
                continue
    alphas = krippendorff_alpha_by_category(t for tasks in tasks_by_category.values() for t in tasks)
    w_by_category = dict(
        ConsensusRanking.objects.filter(kendall_w__isnull=False)
        .values("task__prompt__category__slug")
        .annotate(w=Avg("kendall_w"))
        .values_list("task__prompt__category__slug", "w")
    )
    consensus_counts = dict(
        ConsensusRanking.objects.values("task__prompt__category__slug")
        .annotate(n=Count("id"))
        .values_list("task__prompt__category__slug", "n")
    )
    pair_counts = dict(
        PreferencePair.objects.values("category__slug")
        .annotate(n=Count("id"))
        .values_list("category__slug", "n")
    )
    rows = []
    for category in Category.objects.order_by("position", "slug"):
        alpha = alphas.get(category.slug)
        rows.append(
            {
                "category": category.slug,
                "name": category.name,
                "tasks_with_consensus": consensus_counts.get(category.slug, 0),
                "rankings": rankings_by_category.get(category.slug, 0),
                "kendall_w": w_by_category.get(category.slug),
                "mean_pairwise_tau": _mean(taus_by_category.get(category.slug, [])),
                "krippendorff_alpha": None if alpha is None or math.isnan(alpha) else alpha,
                "pairs": pair_counts.get(category.slug, 0),
            }
        )
    return rows


def annotator_agreement() -> list[dict[str, object]]:
    """Per annotator (admin view): gold and leave-one-out agreement next to their current weight."""
    taus = annotator_taus()
    users = get_user_model().objects.filter(pk__in=taus.keys()).select_related("profile").order_by("username")
    rows = []
    for user in users:
        entry = taus[user.pk]
        profile = getattr(user, "profile", None)
        rows.append(
            {
                "user_id": user.pk,
                "username": user.username,
                "role": getattr(profile, "role", None),
                "weight": getattr(profile, "weight", None),
                "gold_tasks": len(entry.gold),
                "gold_tau": _mean(entry.gold),
                "shared_tasks": len(entry.loo),
                "loo_tau": _mean(entry.loo),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------------
# First places and pair counts (IterComp Fig. 3)
# --------------------------------------------------------------------------------------------------------


def first_place_shares() -> list[dict[str, object]]:
    """Per category and generator: how often the generator's image is first in the consensus."""
    firsts: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    # (image id, category) per consensus: one image may head several tasks (later iterations reuse it).
    first_images: list[tuple[int, str]] = []
    rows = ConsensusRanking.objects.values_list("ordering", "task__prompt__category__slug")
    for ordering, slug in rows.iterator(chunk_size=2000):
        if ordering and ordering[0]:
            first_images.append((int(ordering[0][0]), slug))
    generator_of = dict(
        Image.objects.filter(pk__in={i for i, _ in first_images}).values_list("pk", "generator__name")
    )
    for image_id, slug in first_images:
        firsts[slug][generator_of[image_id]] += 1
        totals[slug] += 1
    # Generators that took part in a category but never came first still belong on the chart.
    present = (
        TaskImage.objects.filter(task__consensus__isnull=False)
        .values_list("task__prompt__category__slug", "image__generator__name")
        .order_by()
        .distinct()
    )
    for slug, name in present:
        firsts[slug][name] += 0
    result = []
    for category in Category.objects.order_by("position", "slug"):
        counter = firsts.get(category.slug, Counter())
        total = totals.get(category.slug, 0)
        for name, count in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
            result.append(
                {
                    "category": category.slug,
                    "generator": name,
                    "first_places": count,
                    "tasks": total,
                    "share": count / total if total else 0.0,
                }
            )
    return result


def pair_counts() -> list[dict[str, object]]:
    rows = (
        PreferencePair.objects.values("category__slug", "source", "iteration")
        .annotate(pairs=Count("id"), ties=Count("id", filter=Q(label=0.5)))
        .order_by("category__slug", "iteration", "source")
    )
    return [
        {
            "category": r["category__slug"],
            "source": r["source"],
            "iteration": r["iteration"],
            "pairs": r["pairs"],
            "ties": r["ties"],
        }
        for r in rows
    ]


# --------------------------------------------------------------------------------------------------------
# Export selections
# --------------------------------------------------------------------------------------------------------


def pairs_for_export(filters: ExportFilters) -> QuerySet[PreferencePair]:
    qs = PreferencePair.objects.all()
    if filters.categories:
        qs = qs.filter(category__slug__in=filters.categories)
    if filters.splits:
        qs = qs.filter(prompt__split__in=filters.splits)
    if filters.iterations:
        qs = qs.filter(iteration__in=filters.iterations)
    if filters.generators:
        qs = qs.filter(
            Q(winner__generator__slug__in=filters.generators)
            | Q(loser__generator__slug__in=filters.generators)
        )
    if filters.date_from:
        qs = qs.filter(created_at__date__gte=filters.date_from)
    if filters.date_to:
        qs = qs.filter(created_at__date__lte=filters.date_to)
    if filters.min_agreement is not None:
        qs = qs.filter(consensus__kendall_w__gte=filters.min_agreement)
    if filters.sources:
        qs = qs.filter(source__in=filters.sources)
    return qs


def consensus_for_export(filters: ExportFilters) -> QuerySet[ConsensusRanking]:
    qs = ConsensusRanking.objects.all()
    if filters.categories:
        qs = qs.filter(task__prompt__category__slug__in=filters.categories)
    if filters.splits:
        qs = qs.filter(task__prompt__split__in=filters.splits)
    if filters.iterations:
        qs = qs.filter(task__iteration__in=filters.iterations)
    if filters.generators:
        qs = qs.filter(
            Exists(
                TaskImage.objects.filter(
                    task_id=OuterRef("task_id"), image__generator__slug__in=filters.generators
                )
            )
        )
    if filters.date_from:
        qs = qs.filter(updated_at__date__gte=filters.date_from)
    if filters.date_to:
        qs = qs.filter(updated_at__date__lte=filters.date_to)
    if filters.min_agreement is not None:
        qs = qs.filter(kendall_w__gte=filters.min_agreement)
    if filters.sources:
        from annotation.services.consensus import MODEL_RANKING_SOURCES

        human = Exists(
            Ranking.objects.filter(task_id=OuterRef("task_id")).exclude(source__in=MODEL_RANKING_SOURCES)
        )
        if set(filters.sources) == {"human"}:
            qs = qs.filter(human)
        elif set(filters.sources) == {"model"}:
            qs = qs.filter(~human)
    return qs


# --------------------------------------------------------------------------------------------------------
# Jobs and snapshots
# --------------------------------------------------------------------------------------------------------


def export_jobs_visible_to(user) -> QuerySet[ExportJob]:
    qs = ExportJob.objects.select_related("requested_by")
    return qs if is_admin(user) else qs.filter(requested_by=user)


def export_job_for(user, job_id: int) -> ExportJob | None:
    return export_jobs_visible_to(user).filter(pk=job_id).first()


def snapshots_list() -> QuerySet[DatasetSnapshot]:
    return DatasetSnapshot.objects.select_related("created_by").annotate(rounds=Count("training_rounds"))


def gold_tasks_count() -> int:
    return RankingTask.objects.filter(is_gold=True).count()


# --------------------------------------------------------------------------------------------------------
# Ranking records (one per consensus) for the ranking exports
# --------------------------------------------------------------------------------------------------------


def _chunks(iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _tie_groups(ordering: list[list[int]], strict_pairs: set[tuple[int, int]]) -> list[list[int]]:
    groups: list[list[int]] = []
    previous = None
    for item in (i for group in ordering for i in group):
        if previous is not None and (previous, item) not in strict_pairs:
            groups[-1].append(item)
        else:
            groups.append([item])
        previous = item
    return groups


def ranking_records(qs: QuerySet[ConsensusRanking], *, chunk_size: int = 2000) -> Iterator[dict[str, object]]:
    """One dict per consensus, in task order, with the task's images (in display position order), the
    consensus rank of each, and every expert's ranking (annotator id, ordering, weight, source).

    Reads in chunks through a server-side cursor, so memory stays bounded by ``chunk_size`` tasks.
    """
    from annotation.services.consensus import MODEL_RANKING_SOURCES

    rows = qs.order_by("task_id").values_list(
        "id",
        "task_id",
        "task__prompt_id",
        "task__prompt__text",
        "task__prompt__category__slug",
        "task__prompt__subcategory__slug",
        "task__prompt__split",
        "task__prompt__source",
        "task__prompt__licence",
        "task__iteration",
        "method",
        "kendall_w",
        "n_rankings",
        "ordering",
        "updated_at",
    )
    for chunk in _chunks(rows.iterator(chunk_size=chunk_size), chunk_size):
        consensus_ids = [row[0] for row in chunk]
        task_ids = [row[1] for row in chunk]
        # Neighbours of the strict consensus without a label-1.0 pair between them are tied (the pairs
        # service kept them as 0.5 pairs or skipped them): that is how exports show the experts' ties.
        strict: dict[int, set[tuple[int, int]]] = defaultdict(set)
        for consensus_id, winner, loser in PreferencePair.objects.filter(
            consensus_id__in=consensus_ids, label=1.0
        ).values_list("consensus_id", "winner_id", "loser_id"):
            strict[consensus_id].add((winner, loser))
        images: dict[int, list[tuple]] = defaultdict(list)
        for task_id, image_id, sha, path, generator in (
            TaskImage.objects.filter(task_id__in=task_ids)
            .order_by("task_id", "position")
            .values_list("task_id", "image_id", "image__sha256", "image__file", "image__generator__slug")
        ):
            images[task_id].append((image_id, sha, path, generator))
        experts: dict[int, list[tuple]] = defaultdict(list)
        for task_id, annotator_id, ordering, source, weight in (
            Ranking.objects.filter(task_id__in=task_ids)
            .order_by("task_id", "id")
            .values_list("task_id", "annotator_id", "ordering", "source", "annotator__profile__weight")
        ):
            experts[task_id].append((annotator_id, ordering, source, 1.0 if weight is None else weight))
        for (
            consensus_id,
            task_id,
            prompt_id,
            text,
            category,
            subcategory,
            split,
            prompt_source,
            licence,
            iteration,
            method,
            kendall_w,
            n_rankings,
            ordering,
            updated_at,
        ) in chunk:
            task_images = images.get(task_id, [])
            task_experts = experts.get(task_id, [])
            human = any(source not in MODEL_RANKING_SOURCES for _, _, source, _ in task_experts)
            yield {
                "task_id": task_id,
                "prompt_id": prompt_id,
                "prompt": text,
                "category": category,
                "subcategory": subcategory,
                "split": split,
                "prompt_source": prompt_source,
                "prompt_licence": licence,
                "iteration": iteration,
                "source": "human" if human or not task_experts else "model",
                "method": method,
                "kendall_w": kendall_w,
                "n_rankings": n_rankings,
                "image_ids": [i[0] for i in task_images],
                "image_sha256": [i[1] for i in task_images],
                "image_path": [i[2] for i in task_images],
                "generators": [i[3] for i in task_images],
                "ordering": ordering,
                "tie_groups": _tie_groups(ordering, strict.get(consensus_id, set())),
                "updated_at": updated_at.isoformat(),
                "experts": task_experts,
            }
