"""Consensus of a task's expert rankings, its agreement, and the image-rank pairs derived from it.

The ranking page calls :func:`consensus_schedule` after each submitted ranking; a worker then runs
:func:`consensus_recompute`, which aggregates the rankings (weighted by each annotator's weight), stores
Kendall's W, replaces the task's pairs atomically and, when the experts disagree, asks for one more ranking.
The ranking mathematics lives in the Django-free package ``rankmath`` (aggregation, agreement, pairs).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from annotation.models import (
    AnnotatorProfile,
    ConsensusRanking,
    PairSource,
    PreferencePair,
    Ranking,
    RankingTask,
    TaskImage,
    TaskStatus,
)
from annotation.services.task_status import task_reopen
from rankmath.aggregation import (
    KEMENY_MAX_ITEMS,
    AggregationResult,
    _prepare,
    aggregate,
    consensus_tie_groups,
    pairwise_support,
)
from rankmath.agreement import kendalls_w, needs_more_rankings
from rankmath.pairs import Pair, pairs_from_ordering
from rankmath.rankformats import Ordering, normalize_ordering

logger = logging.getLogger(__name__)

# Ranking.source values written by the loop's reward-model insertion rather than by a person.
MODEL_RANKING_SOURCES = frozenset({"model", "reward_model"})


def consensus_schedule(*, task_id: int) -> None:
    """Recompute the task's consensus in a worker once the caller's transaction commits.

    Enqueued on commit so the worker never reads the database before the new ranking is visible.
    """
    from annotation.tasks import recompute_consensus

    transaction.on_commit(lambda: recompute_consensus.delay(task_id=task_id))


@dataclass(frozen=True)
class _Inputs:
    rankings: list[Ranking]
    orderings: list[Ordering]
    weights: list[float]


def _weight_of(ranking: Ranking) -> float:
    try:
        return float(ranking.annotator.profile.weight)
    except AnnotatorProfile.DoesNotExist:
        # A ranking by a user without a profile (e.g. a superuser) counts like a default expert.
        return 1.0


def _load_inputs(task: RankingTask) -> _Inputs:
    """The task's rankings that cover exactly its current images (older ones may predate an insertion)."""
    image_ids = set(TaskImage.objects.filter(task=task).values_list("image_id", flat=True))
    rankings, orderings, weights = [], [], []
    for ranking in Ranking.objects.filter(task=task).select_related("annotator__profile").order_by("id"):
        ordering = normalize_ordering(ranking.ordering)
        items = {item for group in ordering for item in group}
        if items != image_ids or sum(len(g) for g in ordering) != len(items):
            logger.warning("ranking %s does not cover task %s's images; left out", ranking.pk, task.pk)
            continue
        rankings.append(ranking)
        orderings.append(ordering)
        weights.append(_weight_of(ranking))
    return _Inputs(rankings=rankings, orderings=orderings, weights=weights)


def _aggregate(method: str, orderings: list[Ordering], weights: list[float]) -> AggregationResult:
    n_items = sum(len(group) for group in orderings[0])
    if method == "kemeny" and n_items > KEMENY_MAX_ITEMS:
        # Exact Kemeny is exponential in the items; a task grown past the limit falls back to Borda.
        logger.info("task has %d images, more than exact Kemeny allows; using Borda", n_items)
        method = "borda"
    return aggregate(method, orderings, weights)


def _pair_weight(pair: Pair, support, index: dict[Hashable, int], total: float) -> float:
    # Share of the (weighted) experts who agree with the pair's direction; ties count half.
    return round(float(support[index[pair.winner], index[pair.loser]]) / total, 6)


@transaction.atomic
def consensus_recompute(*, task_id: int, method: str | None = None) -> ConsensusRanking | None:
    """Aggregate the task's rankings into its consensus, store agreement and replace its pairs.

    The task row is locked (select_for_update) for the whole recompute, so concurrent recomputes of one
    task run one after the other and the last one wins with a complete, non-duplicated set of pairs.
    Returns ``None`` (and removes any stale consensus) when no usable ranking exists.
    """
    task = RankingTask.objects.select_for_update(no_key=True).select_related("prompt").get(pk=task_id)
    inputs = _load_inputs(task)
    if not inputs.rankings:
        ConsensusRanking.objects.filter(task=task).delete()  # its pairs cascade
        return None

    result = _aggregate(method or settings.CONSENSUS_METHOD, inputs.orderings, inputs.weights)
    n = len(inputs.rankings)
    kendall_w: float | None = None
    if n >= 2:
        w = kendalls_w(inputs.orderings)
        kendall_w = None if math.isnan(w) else float(w)

    consensus, _ = ConsensusRanking.objects.update_or_create(
        task=task,
        defaults={
            "ordering": result.ordering,
            "method": result.method,
            "scores": {str(item): float(score) for item, score in result.scores.items()},
            "n_rankings": n,
            "kendall_w": kendall_w,
        },
    )
    _replace_pairs(task=task, consensus=consensus, result=result, inputs=inputs)
    _request_more_rankings_if_needed(task=task, n=n, kendall_w=kendall_w)
    return consensus


def _replace_pairs(
    *, task: RankingTask, consensus: ConsensusRanking, result: AggregationResult, inputs: _Inputs
) -> None:
    grouped = consensus_tie_groups(result, inputs.orderings, inputs.weights)
    pairs = pairs_from_ordering(grouped, ties="half" if settings.PAIR_TIES == "half" else "skip")
    prepared = _prepare(inputs.orderings, inputs.weights)
    index = {item: i for i, item in enumerate(prepared.items)}
    support = pairwise_support(prepared)
    total = float(prepared.weights.sum())
    human = any(r.source not in MODEL_RANKING_SOURCES for r in inputs.rankings)
    source = PairSource.HUMAN if human else PairSource.MODEL
    PreferencePair.objects.filter(consensus=consensus).delete()
    PreferencePair.objects.bulk_create(
        PreferencePair(
            prompt_id=task.prompt_id,
            category_id=task.prompt.category_id,
            winner_id=pair.winner,
            loser_id=pair.loser,
            consensus=consensus,
            source=source,
            iteration=task.iteration,
            weight=_pair_weight(pair, support, index, total),
            label=pair.label,
        )
        for pair in pairs
    )


def _request_more_rankings_if_needed(*, task: RankingTask, n: int, kendall_w: float | None) -> None:
    """Reopen a task whose experts disagree for one more ranking, up to CONSENSUS_MAX_RANKINGS.

    Only once the task has all the rankings it asked for (earlier, W of a partial set says little), and
    never for a retired task.
    """
    if task.status == TaskStatus.RETIRED or n < 2 or n < task.required_rankings:
        return
    w = math.nan if kendall_w is None else kendall_w
    if needs_more_rankings(
        w, n, threshold=settings.CONSENSUS_AGREEMENT_THRESHOLD, cap=settings.CONSENSUS_MAX_RANKINGS
    ):
        task_reopen(task=task, required_rankings=n + 1)


def consensus_schedule_all() -> int:
    """Recompute every task that has rankings (after imports, or a change of CONSENSUS_METHOD or PAIR_TIES).

    Returns how many recomputes were enqueued; each runs in a worker after the caller's commit.
    """
    task_ids = list(Ranking.objects.order_by("task_id").values_list("task_id", flat=True).distinct())
    for task_id in task_ids:
        consensus_schedule(task_id=task_id)
    return len(task_ids)
