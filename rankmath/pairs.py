"""Pairwise preferences from orderings, and reward-guided insertion of new samples into a human ranking.

:func:`pairs_from_ordering` turns a consensus ordering into the training pairs of the reward models (all
C(N, 2) pairs of a strict ranking: 15 for the six-model gallery).

:func:`insert_by_score` is the data-expansion step of IterComp's Algorithm 1: after each iteration the
fine-tuned model's new samples are placed into the existing human ranking by reward score, while the human
ranking itself is left untouched. The official script walks up from the bottom and drops a new sample just
below the first human item scoring at least as much; here each new item goes to the slot that minimises its
disagreements with the reward scores. When the reward scores of the human items decrease along the human
ranking both rules give the same place (except that the official loop never compares against the top item);
when one human item is scored out of line, the walk can stop at it while this rule weighs all items.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Literal

from rankmath.rankformats import Ordering, OrderingError, item_sort_key, validate_ordering


@dataclass(frozen=True)
class Pair:
    """``label`` 1.0: ``winner`` is preferred to ``loser``; 0.5: the two are tied (order then arbitrary)."""

    winner: Hashable
    loser: Hashable
    label: float


def pairs_from_ordering(ordering: Ordering, ties: Literal["skip", "half"] = "skip") -> list[Pair]:
    """Every pair of items once: better group first, then within-group tie pairs if ``ties == "half"``.

    Pairs come in ordering order (for ``[[a], [b], [c]]``: (a, b), (a, c), (b, c)); tied pairs are listed in
    item-id order after the strict pairs of their group.
    """
    if ties not in ("skip", "half"):
        raise ValueError(f"ties must be 'skip' or 'half', got {ties!r}")
    groups = validate_ordering(ordering)
    pairs: list[Pair] = []
    for i, group in enumerate(groups):
        for winner in group:
            for lower in groups[i + 1 :]:
                pairs.extend(Pair(winner, loser, 1.0) for loser in lower)
        if ties == "half":
            pairs.extend(
                Pair(group[a], group[b], 0.5) for a in range(len(group)) for b in range(a + 1, len(group))
            )
    return pairs


def disagreements(ordering: Ordering, scores: Mapping[Hashable, float]) -> int:
    """Pairs placed in strictly different order by the ordering and by the scores (ties agree with all)."""
    groups = validate_ordering(ordering)
    count = 0
    for i, group in enumerate(groups):
        for upper in group:
            for lower_group in groups[i + 1 :]:
                count += sum(scores[upper] < scores[lower] for lower in lower_group)
    return count


def _slot_costs(groups: Ordering, scores: Mapping[Hashable, float], score: float) -> list[int]:
    """Disagreements of a new item with the human items when inserted before group ``p`` (p = 0..len)."""
    # Start with the new item on top: every human item scoring higher is a disagreement.
    cost = sum(scores[item] > score for group in groups for item in group)
    costs = [cost]
    for group in groups:
        # Moving the new item below ``group`` resolves those scoring higher and breaks those scoring lower.
        cost += sum(scores[item] < score for item in group) - sum(scores[item] > score for item in group)
        costs.append(cost)
    return costs


def insert_by_score(
    ordering: Ordering, existing_scores: Mapping[Hashable, float], new_scores: Mapping[Hashable, float]
) -> Ordering:
    """Insert new items into a human ordering by reward score without reordering the human items.

    Each new item becomes a singleton group in the gap (between two human tie groups, or at either end)
    that minimises the number of human items it disagrees with by score. Among equally good gaps the
    *lowest* is chosen: a new sample has to out-score a human-ranked item to be placed above it (as in the
    official script, where equal rewards leave the new sample below). New items in the same gap are ordered
    by score, higher first, equal scores by item id.

    The total disagreement with the scores is then minimal over all insertions that keep the human order
    and order the new items by score, because the new-vs-human costs separate per new item and, with this
    tie-break, a higher-scored new item never lands in a lower gap than a lower-scored one.
    """
    groups = validate_ordering(ordering)
    human = {item for group in groups for item in group}
    missing = human - set(existing_scores)
    if missing:
        raise OrderingError(f"no reward score for ranked items {sorted(missing, key=item_sort_key)}")
    clash = human & set(new_scores)
    if clash:
        raise OrderingError(f"new items already ranked: {sorted(clash, key=item_sort_key)}")
    gaps: dict[int, list[Hashable]] = {}
    for item, score in new_scores.items():
        costs = _slot_costs(groups, existing_scores, score)
        best = min(costs)
        slot = max(p for p, cost in enumerate(costs) if cost == best)
        gaps.setdefault(slot, []).append(item)
    result: Ordering = []
    for p in range(len(groups) + 1):
        newcomers = sorted(gaps.get(p, []), key=lambda item: (-new_scores[item], item_sort_key(item)))
        result.extend([item] for item in newcomers)
        if p < len(groups):
            result.append(list(groups[p]))
    return result
