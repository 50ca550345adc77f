"""Inter-annotator agreement for expert rankings, and annotator weights derived from it.

* :func:`kendalls_w` - concordance of one task's rankings (with the tie correction), in ``[0, 1]``.
* :func:`kendall_tau_b` - tau-b between two orderings (equals ``scipy.stats.kendalltau``).
* :func:`mean_pairwise_tau`, :func:`leave_one_out_tau`, :func:`tau_against_reference`.
* :func:`krippendorff_alpha_ordinal` / :func:`krippendorff_alpha_by_category` - ordinal alpha over many
  tasks, each (task, item) a unit, each annotator a coder, value = the item's (fractional) rank.
* :func:`weights_from_agreement` and :func:`needs_more_rankings` - the policy the annotation app applies.

Undefined statistics (a ranking with every item tied, fewer than two items) are ``nan``, as in scipy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import krippendorff
import numpy as np

from rankmath.aggregation import DEFAULT_METHOD, aggregate
from rankmath.rankformats import Ordering, OrderingError, item_sort_key, positions, validate_ordering


def _common_items(rankings: Sequence[Ordering]) -> list[Hashable]:
    if not rankings:
        raise OrderingError("need at least one ranking")
    first = validate_ordering(rankings[0])
    items = sorted((item for group in first for item in group), key=item_sort_key)
    for ranking in rankings[1:]:
        validate_ordering(ranking, items=items)
    return items


def kendalls_w(rankings: Sequence[Ordering]) -> float:
    """Kendall's coefficient of concordance W with the correction for ties.

    ``W = 12 S / (k^2 (n^3 - n) - k sum_j T_j)`` for k rankings of n items, S the sum of squared deviations
    of the items' rank sums from their mean, ``T_j = sum (t^3 - t)`` over rater j's tie groups of size t.
    1 = identical rankings, 0 = no agreement. ``nan`` when the denominator vanishes (every ranking ties
    everything, or a single item).
    """
    items = _common_items(rankings)
    k, n = len(rankings), len(items)
    rank_sums = np.zeros(n)
    tie_term = 0.0
    for ranking in rankings:
        rank = positions(ranking)
        rank_sums += [rank[item] for item in items]
        tie_term += sum(len(group) ** 3 - len(group) for group in ranking)
    s = float(((rank_sums - rank_sums.mean()) ** 2).sum())
    denominator = k**2 * (n**3 - n) - k * tie_term
    if denominator <= 0:
        return math.nan
    return 12 * s / denominator


def kendall_tau_b(a: Ordering, b: Ordering) -> float:
    """Kendall's tau-b between two orderings of the same items: ``(C - D) / sqrt((n0 - t_a)(n0 - t_b))``.

    C and D count concordant and discordant pairs, ``n0 = n(n-1)/2``, ``t_a``/``t_b`` the pairs tied in
    ``a``/``b``. ``nan`` when either ordering ties every pair.
    """
    items = _common_items([a, b])
    rank_a, rank_b = positions(a), positions(b)
    concordant = discordant = tied_a = tied_b = 0
    for x, y in itertools.combinations(items, 2):
        da = rank_a[x] - rank_a[y]
        db = rank_b[x] - rank_b[y]
        tied_a += da == 0
        tied_b += db == 0
        if da * db > 0:
            concordant += 1
        elif da * db < 0:
            discordant += 1
    n0 = len(items) * (len(items) - 1) // 2
    denominator = math.sqrt((n0 - tied_a) * (n0 - tied_b))
    if denominator == 0:
        return math.nan
    return (concordant - discordant) / denominator


def mean_pairwise_tau(rankings: Sequence[Ordering]) -> float:
    """Mean tau-b over all pairs of rankings; undefined (nan) pairs are left out, nan if all are."""
    if len(rankings) < 2:
        raise OrderingError("mean pairwise tau needs at least two rankings")
    _common_items(rankings)
    taus = [kendall_tau_b(a, b) for a, b in itertools.combinations(rankings, 2)]
    defined = [tau for tau in taus if not math.isnan(tau)]
    return float(np.mean(defined)) if defined else math.nan


def leave_one_out_tau(
    rankings: Sequence[Ordering], weights: Sequence[float] | None = None, method: str = DEFAULT_METHOD
) -> list[float]:
    """For each ranking, tau-b against the weighted consensus of all the *other* rankings.

    Excluding the annotator's own ranking keeps a lone expert from agreeing with themself. When the others
    all have zero weight the consensus is undefined and that entry is nan.
    """
    if len(rankings) < 2:
        raise OrderingError("leave-one-out agreement needs at least two rankings")
    _common_items(rankings)
    w = [1.0] * len(rankings) if weights is None else [float(x) for x in weights]
    if len(w) != len(rankings):
        raise OrderingError(f"got {len(w)} weights for {len(rankings)} rankings")
    taus = []
    for j, ranking in enumerate(rankings):
        others = [r for i, r in enumerate(rankings) if i != j]
        other_weights = [x for i, x in enumerate(w) if i != j]
        if sum(other_weights) <= 0:
            taus.append(math.nan)
            continue
        consensus = aggregate(method, others, other_weights)
        taus.append(kendall_tau_b(ranking, consensus.ordering))
    return taus


def tau_against_reference(ordering: Ordering, reference: Ordering) -> float:
    """Tau-b of an annotator's ordering against a gold reference, on the items both contain.

    A gold reference may rank only the items whose order is certain; the annotator's ordering is then
    restricted to those items. Fewer than two shared items is an error.
    """
    groups = validate_ordering(ordering)
    gold = validate_ordering(reference)
    gold_items = {item for group in gold for item in group}
    own_items = {item for group in groups for item in group}
    shared = gold_items & own_items
    if len(shared) < 2:
        raise OrderingError(f"ordering and reference share {len(shared)} items; need at least 2")

    def restrict(o: Ordering) -> Ordering:
        return [kept for group in o if (kept := [item for item in group if item in shared])]

    return kendall_tau_b(restrict(groups), restrict(gold))


# --------------------------------------------------------------------------------------------------------
# Krippendorff's alpha over many tasks
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnotatedTask:
    """One ranking task: its id, its category (e.g. ``"spatial"``) and each annotator's ordering."""

    task_id: Hashable
    category: str
    rankings: Mapping[Hashable, Ordering]


@dataclass(frozen=True)
class ReliabilityMatrix:
    """Coders x units matrix for ``krippendorff.alpha``; nan where a coder did not rank that task."""

    data: np.ndarray
    annotators: list[Hashable]
    units: list[tuple[Hashable, Hashable]]  # (task_id, item)


def reliability_matrix(tasks: Iterable[AnnotatedTask]) -> ReliabilityMatrix:
    """Rows = annotators (sorted), columns = (task, item) units in task order; values = fractional ranks.

    Each ranking contributes its items' 1-based ranks (ties share the mean rank), so a unit holds one value
    per annotator who ranked the task and nan for the rest.
    """
    tasks = list(tasks)
    annotators = sorted({a for task in tasks for a in task.rankings}, key=item_sort_key)
    row = {a: i for i, a in enumerate(annotators)}
    units: list[tuple[Hashable, Hashable]] = []
    columns: list[np.ndarray] = []
    for task in tasks:
        if not task.rankings:
            continue
        items = _common_items(list(task.rankings.values()))
        ranks = {annotator: positions(validate_ordering(o)) for annotator, o in task.rankings.items()}
        for item in items:
            column = np.full(len(annotators), np.nan)
            for annotator, rank in ranks.items():
                column[row[annotator]] = rank[item]
            units.append((task.task_id, item))
            columns.append(column)
    data = np.column_stack(columns) if columns else np.empty((len(annotators), 0))
    return ReliabilityMatrix(data=data, annotators=annotators, units=units)


def krippendorff_alpha_ordinal(tasks: Iterable[AnnotatedTask]) -> float:
    """Ordinal Krippendorff's alpha over the tasks' rank values (nan if no unit has two coders)."""
    matrix = reliability_matrix(tasks)
    pairable = (~np.isnan(matrix.data)).sum(axis=0) >= 2
    if not pairable.any():
        return math.nan
    values = matrix.data[:, pairable]
    if np.unique(values[~np.isnan(values)]).size < 2:
        return math.nan
    return float(krippendorff.alpha(reliability_data=values, level_of_measurement="ordinal"))


def krippendorff_alpha_by_category(tasks: Iterable[AnnotatedTask]) -> dict[str, float]:
    """:func:`krippendorff_alpha_ordinal` computed separately for each task category."""
    by_category: dict[str, list[AnnotatedTask]] = {}
    for task in tasks:
        by_category.setdefault(task.category, []).append(task)
    return {category: krippendorff_alpha_ordinal(group) for category, group in sorted(by_category.items())}


# --------------------------------------------------------------------------------------------------------
# Policy: annotator weights and when to ask for more rankings
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightPolicy:
    """How agreement becomes an annotator weight.

    weight = clip(mean tau, floor, ceiling). Gold-task taus are used when the annotator has at least
    ``min_gold`` of them (gold is ground truth), else leave-one-out taus when there are at least
    ``min_observations``, else ``default_weight``: a newcomer counts like an annotator of moderate agreement
    until there is evidence. The floor stays above zero so a weak annotator still counts a little and their
    future agreement can be measured against a consensus they contributed to.
    """

    floor: float = 0.1
    ceiling: float = 1.0
    min_observations: int = 5
    min_gold: int = 3
    default_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.floor <= self.ceiling:
            raise ValueError(f"need 0 < floor <= ceiling, got floor={self.floor}, ceiling={self.ceiling}")
        if not self.floor <= self.default_weight <= self.ceiling:
            raise ValueError("default_weight must lie within [floor, ceiling]")
        if self.min_observations < 1 or self.min_gold < 1:
            raise ValueError("min_observations and min_gold must be >= 1")


def _defined(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if not math.isnan(v)]


def weights_from_agreement(
    loo_taus: Mapping[Hashable, Sequence[float]],
    gold_taus: Mapping[Hashable, Sequence[float]] | None = None,
    policy: WeightPolicy | None = None,
) -> dict[Hashable, float]:
    """Annotator weight from their mean leave-one-out or gold tau (nan taus ignored), see :class:`WeightPolicy`."""
    policy = policy or WeightPolicy()
    gold_taus = gold_taus or {}
    weights: dict[Hashable, float] = {}
    for annotator in sorted(set(loo_taus) | set(gold_taus), key=item_sort_key):
        gold = _defined(gold_taus.get(annotator, ()))
        loo = _defined(loo_taus.get(annotator, ()))
        if len(gold) >= policy.min_gold:
            weight = float(np.clip(np.mean(gold), policy.floor, policy.ceiling))
        elif len(loo) >= policy.min_observations:
            weight = float(np.clip(np.mean(loo), policy.floor, policy.ceiling))
        else:
            weight = policy.default_weight
        weights[annotator] = weight
    return weights


def needs_more_rankings(w: float, n: int, threshold: float = 0.5, cap: int = 5, minimum: int = 2) -> bool:
    """Whether a task should be offered to one more expert.

    Yes while fewer than ``minimum`` rankings exist (W is meaningless for one ranking); otherwise yes when
    Kendall's W is below ``threshold`` (or undefined) and fewer than ``cap`` rankings exist. ``cap`` bounds
    the cost of genuinely ambiguous prompts.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if not 1 <= minimum <= cap:
        raise ValueError(f"need 1 <= minimum <= cap, got minimum={minimum}, cap={cap}")
    if n >= cap:
        return False
    if n < minimum:
        return True
    return math.isnan(w) or w < threshold
