"""Consensus of a task's expert rankings, each ranking weighted by its annotator's weight.

Three methods, all taking ``rankings`` (orderings over the same items, ties allowed) and optional
``weights`` (one non-negative weight per ranking, default 1):

* ``borda`` (the default): an item earns one point per item ranked below it and half a point per item
  tied with it; scores are the weighted mean points.
* ``kemeny``: the strict ordering minimising the weighted number of pairwise disagreements with the
  rankings (a tie in a ranking counts half a disagreement either way). Exact dynamic programme over subsets,
  refused above :data:`KEMENY_MAX_ITEMS` items.
* ``plackett_luce``: maximum a-posteriori Plackett-Luce strengths by Hunter's (2004) MM algorithm with
  per-ranking weights; ties are handled as the expectation over uniformly random tie-breaks.

Every consensus is a *strict* ordering. Deterministic tie-breaking, used by all methods: higher method
score first (scores within 1e-9 count as equal), then higher weighted Copeland score (pairwise majorities
won, half for a weighted pairwise draw), then the smaller item id (:func:`item_sort_key`). For Kemeny,
whose score does not order items, the same chain with the Borda score as primary picks among the optimal
orderings: the optimum that is lexicographically first under that priority is returned.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rankmath.rankformats import Ordering, item_sort_key, positions, validate_ordering

KEMENY_MAX_ITEMS = 8
DEFAULT_METHOD = "borda"
_SCORE_DECIMALS = 9


class AggregationError(ValueError):
    """The rankings cannot be aggregated as asked (bad weights, too many items, no MLE...)."""


@dataclass(frozen=True)
class AggregationResult:
    """A consensus ordering (strict, best first), a score per item, and the method that produced it.

    ``objective`` is the weighted Kemeny distance per unit weight for ``kemeny``, the weighted
    log-likelihood (log-posterior without the prior's constant) for ``plackett_luce``, ``None`` for Borda.
    """

    ordering: Ordering
    scores: dict[Hashable, float]
    method: str
    objective: float | None = field(default=None)


@dataclass(frozen=True)
class _Prepared:
    items: list[Hashable]  # sorted by item_sort_key; index = position in matrices
    rankings: list[Ordering]
    weights: np.ndarray


def _prepare(rankings: Sequence[Ordering], weights: Sequence[float] | None) -> _Prepared:
    if not rankings:
        raise AggregationError("need at least one ranking to aggregate")
    first = validate_ordering(rankings[0])
    items = sorted((item for group in first for item in group), key=item_sort_key)
    if len(items) < 1:
        raise AggregationError("rankings are empty")
    checked = [validate_ordering(ranking, items=items) for ranking in rankings]
    if weights is None:
        w = np.ones(len(checked))
    else:
        w = np.asarray(list(weights), dtype=float)
        if w.shape != (len(checked),):
            raise AggregationError(f"got {w.size} weights for {len(checked)} rankings")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise AggregationError(f"weights must be finite and non-negative, got {w.tolist()}")
        if w.sum() <= 0:
            raise AggregationError("weights sum to zero; at least one ranking must count")
    return _Prepared(items=items, rankings=checked, weights=w)


def pairwise_support(prepared: _Prepared) -> np.ndarray:
    """``P[a, b]`` = total weight of rankings putting a above b, plus half the weight of those tying them."""
    index = {item: i for i, item in enumerate(prepared.items)}
    n = len(prepared.items)
    support = np.zeros((n, n))
    for ranking, weight in zip(prepared.rankings, prepared.weights, strict=True):
        rank = positions(ranking)
        for a, b in itertools.permutations(prepared.items, 2):
            if rank[a] < rank[b]:
                support[index[a], index[b]] += weight
            elif rank[a] == rank[b]:
                support[index[a], index[b]] += weight / 2
    return support


def _copeland(support: np.ndarray) -> np.ndarray:
    margin = np.round(support - support.T, _SCORE_DECIMALS)
    wins = (margin > 0).astype(float) + 0.5 * (margin == 0)
    np.fill_diagonal(wins, 0.0)
    return wins.sum(axis=1)


def _priority(items: list[Hashable], primary: np.ndarray, copeland: np.ndarray) -> list[int]:
    """Indices of items in tie-break order: primary score, then Copeland, then item id."""
    return sorted(
        range(len(items)),
        key=lambda i: (-round(float(primary[i]), _SCORE_DECIMALS), -copeland[i], item_sort_key(items[i])),
    )


def _borda_scores(prepared: _Prepared) -> np.ndarray:
    n = len(prepared.items)
    total = np.zeros(n)
    for ranking, weight in zip(prepared.rankings, prepared.weights, strict=True):
        rank = positions(ranking)
        total += weight * np.array([n - rank[item] for item in prepared.items])
    return total / prepared.weights.sum()


def weighted_borda(rankings: Sequence[Ordering], weights: Sequence[float] | None = None) -> AggregationResult:
    """Weighted Borda count; scores are weighted mean points in ``[0, n-1]`` (ties get averaged points)."""
    prepared = _prepare(rankings, weights)
    scores = _borda_scores(prepared)
    order = _priority(prepared.items, scores, _copeland(pairwise_support(prepared)))
    return AggregationResult(
        ordering=[[prepared.items[i]] for i in order],
        scores={prepared.items[i]: float(scores[i]) for i in range(len(prepared.items))},
        method="borda",
    )


def kemeny_distance(
    ordering: Ordering, rankings: Sequence[Ordering], weights: Sequence[float] | None = None
) -> float:
    """Weighted pairwise disagreements between a strict ordering and the rankings (ties count half)."""
    prepared = _prepare(rankings, weights)
    index = {item: i for i, item in enumerate(prepared.items)}
    groups = validate_ordering(ordering, items=prepared.items, allow_ties=False)
    support = pairwise_support(prepared)
    order = [index[group[0]] for group in groups]
    return float(sum(support[b, a] for pos, a in enumerate(order) for b in order[pos + 1 :]))


def weighted_kemeny(
    rankings: Sequence[Ordering], weights: Sequence[float] | None = None
) -> AggregationResult:
    """Exact weighted Kemeny consensus by dynamic programming over subsets (O(2^n n^2), n <= 8).

    ``best[mask]`` is the least disagreement achievable by the items of ``mask`` placed, in some order,
    below all other items; putting ``x`` on top of ``mask`` costs the support of every other item of
    ``mask`` over ``x``. Scores are each item's weighted pairwise support per unit weight (equal to the
    Borda score) and only serve the documented tie-break among optimal orderings.
    """
    prepared = _prepare(rankings, weights)
    n = len(prepared.items)
    if n > KEMENY_MAX_ITEMS:
        raise AggregationError(
            f"exact Kemeny aggregation is limited to {KEMENY_MAX_ITEMS} items (2^n subsets), got {n}; "
            "use borda or plackett_luce"
        )
    support = pairwise_support(prepared)
    full = (1 << n) - 1
    best = np.zeros(1 << n)
    for mask in range(1, full + 1):
        members = [i for i in range(n) if mask >> i & 1]
        best[mask] = min(
            sum(support[y, x] for y in members if y != x) + best[mask & ~(1 << x)] for x in members
        )
    scores = support.sum(axis=1) / prepared.weights.sum()
    priority = _priority(prepared.items, scores, _copeland(support))
    tolerance = 1e-9 * max(1.0, float(prepared.weights.sum()))
    order: list[int] = []
    mask = full
    while mask:
        members = [i for i in range(n) if mask >> i & 1]
        for x in priority:
            if not mask >> x & 1:
                continue
            rest = mask & ~(1 << x)
            if sum(support[y, x] for y in members if y != x) + best[rest] <= best[mask] + tolerance:
                order.append(x)
                mask = rest
                break
    return AggregationResult(
        ordering=[[prepared.items[i]] for i in order],
        scores={prepared.items[i]: float(scores[i]) for i in range(n)},
        method="kemeny",
        objective=float(best[full] / prepared.weights.sum()),
    )


# A choice event: the winner index, the indices it was chosen from, and the event's weight.
_Choice = tuple[int, tuple[int, ...], float]


def choice_events(prepared: _Prepared) -> list[_Choice]:
    """Plackett-Luce choice events of all rankings, merged by (winner, choice set).

    A strict ranking of n items gives n-1 events ("the top item was chosen from all remaining"). A tie
    group G (size g) above the remaining items R is expanded as the average over the g! orders of G: the
    event "i chosen from R + S" for each S ⊆ G containing i has weight ``w / (C(g, |S|) |S|)``, because in
    a uniformly random order S is the remaining part of G with probability 1/C(g, |S|). Choice sets of one
    item carry no information and are dropped, as in choix.
    """
    index = {item: i for i, item in enumerate(prepared.items)}
    merged: dict[tuple[int, tuple[int, ...]], float] = {}
    for ranking, weight in zip(prepared.rankings, prepared.weights, strict=True):
        if weight == 0:
            continue
        remaining = {index[item] for group in ranking for item in group}
        for group in ranking:
            members = [index[item] for item in group]
            rest = remaining - set(members)
            g = len(members)
            for size in range(1, g + 1):
                share = weight / (math.comb(g, size) * size)
                for subset in itertools.combinations(members, size):
                    choice_set = tuple(sorted(rest | set(subset)))
                    if len(choice_set) < 2:
                        continue
                    for winner in subset:
                        key = (winner, choice_set)
                        merged[key] = merged.get(key, 0.0) + share
            remaining = rest
    return [(winner, choice_set, w) for (winner, choice_set), w in sorted(merged.items())]


def _strongly_connected(n: int, events: list[_Choice]) -> bool:
    beats = [set() for _ in range(n)]
    beaten_by = [set() for _ in range(n)]
    for winner, choice_set, _ in events:
        for loser in choice_set:
            if loser != winner:
                beats[winner].add(loser)
                beaten_by[loser].add(winner)

    def reach(start: int, edges: list[set[int]]) -> set[int]:
        seen, stack = {start}, [start]
        while stack:
            for nxt in edges[stack.pop()] - seen:
                seen.add(nxt)
                stack.append(nxt)
        return seen

    return len(reach(0, beats)) == n and len(reach(0, beaten_by)) == n


def plackett_luce_strengths(
    n: int, events: list[_Choice], prior_strength: float = 0.1, max_iter: int = 100_000, tol: float = 1e-10
) -> np.ndarray:
    """Weighted MM (Hunter 2004) for Plackett-Luce: centred log-strengths.

    Update: ``gamma_i <- (W_i + a) / (sum_e w_e [i in C_e] / sum_{j in C_e} gamma_j + a)`` with ``W_i`` the
    weighted wins and ``a = prior_strength``; strengths are rescaled to mean 1 before each update. With unit
    weights this is exactly choix's ``mm_rankings(..., alpha=a)`` (same prior, same normalisation). With
    ``a = 0`` it is the MLE, which exists only if the "beats" graph is strongly connected (Hunter's
    condition); otherwise :class:`AggregationError` is raised.
    """
    if prior_strength < 0:
        raise AggregationError("prior_strength must be >= 0")
    if n == 1:
        return np.zeros(1)
    if prior_strength == 0 and not _strongly_connected(n, events):
        raise AggregationError(
            "Plackett-Luce MLE does not exist: some items are never beaten or never win against the rest "
            "(use prior_strength > 0)"
        )
    winners = np.array([e[0] for e in events], dtype=int)
    weights = np.array([e[2] for e in events])
    wins = np.bincount(winners, weights=weights, minlength=n)
    membership = np.zeros((len(events), n))
    for row, (_, choice_set, _) in enumerate(events):
        membership[row, list(choice_set)] = 1.0
    params = np.zeros(n)
    for _ in range(max_iter):
        gamma = np.exp(params - params.mean())
        gamma *= n / gamma.sum()
        exposure = membership.T @ (weights / (membership @ gamma))
        updated = np.log((wins + prior_strength) / (exposure + prior_strength))
        updated -= updated.mean()
        if np.abs(updated - params).sum() < tol:
            return updated
        params = updated
    raise AggregationError(f"Plackett-Luce MM did not converge in {max_iter} iterations")


def _pl_log_likelihood(params: np.ndarray, events: list[_Choice]) -> float:
    return float(
        sum(w * (params[winner] - np.log(np.exp(params[list(cs)]).sum())) for winner, cs, w in events)
    )


def plackett_luce(
    rankings: Sequence[Ordering], weights: Sequence[float] | None = None, prior_strength: float = 0.1
) -> AggregationResult:
    """Weighted Plackett-Luce consensus; scores are centred log-strengths (choix's convention).

    The small default prior keeps the estimate finite when the MLE does not exist (e.g. a single ranking,
    or unanimous experts), while leaving the order of well-supported items unchanged.
    """
    prepared = _prepare(rankings, weights)
    events = choice_events(prepared)
    params = plackett_luce_strengths(len(prepared.items), events, prior_strength=prior_strength)
    order = _priority(prepared.items, params, _copeland(pairwise_support(prepared)))
    return AggregationResult(
        ordering=[[prepared.items[i]] for i in order],
        scores={item: float(params[i]) for i, item in enumerate(prepared.items)},
        method="plackett_luce",
        objective=_pl_log_likelihood(params, events),
    )


METHODS: dict[str, Callable[..., AggregationResult]] = {
    "borda": weighted_borda,
    "kemeny": weighted_kemeny,
    "plackett_luce": plackett_luce,
}


def aggregate(
    method: str, rankings: Sequence[Ordering], weights: Sequence[float] | None = None
) -> AggregationResult:
    """Dispatch to one of :data:`METHODS` by name (``"borda"``, ``"kemeny"``, ``"plackett_luce"``)."""
    try:
        function = METHODS[method]
    except KeyError:
        raise AggregationError(
            f"unknown aggregation method {method!r}; choose one of {sorted(METHODS)}"
        ) from None
    return function(rankings, weights)


TIE_TOLERANCE = 1e-7


def consensus_tie_groups(
    result: AggregationResult,
    rankings: Sequence[Ordering],
    weights: Sequence[float] | None = None,
    *,
    margin: float = 0.0,
) -> Ordering:
    """The strict consensus with the ties the experts left unresolved merged into groups.

    Two neighbours of the consensus are tied when the weighted share of experts putting the first above the
    second (ties counting half) lies within ``margin`` of one half. With ``margin == 0`` (experts who can
    mark ties themselves, as in the app) they must also have equal method scores: the order was then decided
    by the deterministic item-id tie-break alone. With ``margin > 0`` (a panel that never marks ties, such
    as the simulated one, where an exact tie shows up as a near-even split) the split alone decides; e.g.
    ``0.1`` with five equal experts ties 3-2 splits. A 0.5-labelled pair is then what the panel said.
    """
    if not 0 <= margin < 0.5:
        raise AggregationError(f"tie margin must be in [0, 0.5), got {margin}")
    prepared = _prepare(rankings, weights)
    index = {item: i for i, item in enumerate(prepared.items)}
    support = pairwise_support(prepared)
    total = float(prepared.weights.sum())
    groups: Ordering = []
    previous: Hashable | None = None
    for (item,) in result.ordering:
        if previous is not None:
            a, b = index[previous], index[item]
            share = support[a, b] / total
            even = abs(share - 0.5) <= margin + 1e-9
            if margin == 0:
                even = even and math.isclose(
                    result.scores[previous], result.scores[item], rel_tol=TIE_TOLERANCE, abs_tol=TIE_TOLERANCE
                )
            if even:
                groups[-1].append(item)
                previous = item
                continue
        groups.append([item])
        previous = item
    return groups
