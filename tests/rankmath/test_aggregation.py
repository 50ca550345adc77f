from __future__ import annotations

import itertools
import math
import random

import choix
import numpy as np
import pytest

from rankmath.aggregation import (
    KEMENY_MAX_ITEMS,
    AggregationError,
    aggregate,
    consensus_tie_groups,
    kemeny_distance,
    plackett_luce,
    weighted_borda,
    weighted_kemeny,
)
from rankmath.rankformats import positions

METHODS = ["borda", "kemeny", "plackett_luce"]

# 3 voters a>b>c, 2 voters b>c>a: Borda picks b, but a beats both b and c head to head (Condorcet winner).
CONDORCET = [[["a"], ["b"], ["c"]]] * 3 + [[["b"], ["c"], ["a"]]] * 2


def strict(*items):
    return [[item] for item in items]


def test_borda_scores_are_weighted_mean_points():
    result = weighted_borda(CONDORCET)
    assert result.scores == pytest.approx({"a": 6 / 5, "b": 7 / 5, "c": 2 / 5})
    assert result.ordering == strict("b", "a", "c")
    assert result.method == "borda"


def test_kemeny_and_borda_differ_on_condorcet_example():
    result = weighted_kemeny(CONDORCET)
    assert result.ordering == strict("a", "b", "c")
    # a>b>c disagrees with the two b>c>a voters on (a, b) and (a, c): 4 disagreements over 5 voters.
    assert result.objective == pytest.approx(4 / 5)
    assert weighted_borda(CONDORCET).ordering != result.ordering


def test_borda_gives_tied_items_averaged_points():
    result = weighted_borda([[[0], [1, 2]], strict(1, 0, 2)])
    # Ranking 1: 0 -> 2, 1 and 2 -> 0.5 each; ranking 2: 1 -> 2, 0 -> 1, 2 -> 0.
    assert result.scores == pytest.approx({0: 1.5, 1: 1.25, 2: 0.25})
    assert result.ordering == strict(0, 1, 2)


def test_borda_tie_breaks_by_copeland_then_item_id():
    # Borda ties 0 and 1 (4 points each) but 1 beats 0 in two of three rankings.
    result = weighted_borda([strict(0, 2, 1), strict(1, 0, 2), strict(1, 0, 2)])
    assert result.scores[0] == pytest.approx(result.scores[1])
    assert result.ordering == strict(1, 0, 2)
    # Perfect symmetry: neither score nor head-to-head separates them, so the smaller id goes first.
    assert weighted_borda([strict(1, 0), strict(0, 1)]).ordering == strict(0, 1)


def test_kemeny_counts_input_ties_half_each_way():
    rankings = [[["a", "b"], ["c"]], strict("c", "b", "a")]
    # b>a>c, b>c>a and c>b>a all cost 2.5; Borda (b 1.25, c 1.0, a 0.75) picks b then c among them.
    result = weighted_kemeny(rankings)
    assert result.ordering == strict("b", "c", "a")
    assert result.objective == pytest.approx(2.5 / 2)
    for ordering in (strict("b", "a", "c"), strict("c", "b", "a")):
        assert kemeny_distance(ordering, rankings) == pytest.approx(2.5)


@pytest.mark.parametrize("method", METHODS)
def test_weights_change_the_winner(method):
    rankings = [strict(0, 1, 2), strict(1, 0, 2)]
    assert aggregate(method, rankings, [1.0, 2.0]).ordering[0] == [1]
    assert aggregate(method, rankings, [2.0, 1.0]).ordering[0] == [0]


@pytest.mark.parametrize("method", METHODS)
def test_integer_weight_equals_repeating_the_ranking(method):
    r1, r2, r3 = strict(0, 1, 2, 3), strict(2, 0, 3, 1), [[1, 3], [0], [2]]
    repeated = aggregate(method, [r1, r1, r1, r2, r3])
    weighted = aggregate(method, [r1, r2, r3], [3.0, 1.0, 1.0])
    assert weighted.ordering == repeated.ordering
    assert weighted.scores == pytest.approx(repeated.scores)


@pytest.mark.parametrize("method", METHODS)
def test_zero_weight_ranking_is_ignored(method):
    r1, r2, r3 = strict(0, 1, 2, 3), strict(1, 0, 3, 2), strict(3, 2, 1, 0)
    with_zero = aggregate(method, [r1, r2, r3], [1.0, 0.5, 0.0])
    without = aggregate(method, [r1, r2], [1.0, 0.5])
    assert with_zero.ordering == without.ordering
    assert with_zero.scores == pytest.approx(without.scores)


@pytest.mark.parametrize("method", METHODS)
def test_single_strict_ranking_is_its_own_consensus(method):
    rng = random.Random(3)
    for _ in range(10):
        items = rng.sample(range(20), 6)
        assert aggregate(method, [strict(*items)]).ordering == strict(*items)


@pytest.mark.parametrize("method", METHODS)
def test_unanimous_rankings_give_that_ranking(method):
    ranking = strict("flux", "sd3", "rpg", "sdxl", "sd15", "instancediffusion")
    assert aggregate(method, [ranking] * 4, [0.3, 1.0, 0.7, 0.5]).ordering == ranking


def _brute_force_kemeny(rankings, weights):
    items = [item for group in rankings[0] for item in group]
    ranks = [positions(r) for r in rankings]

    def cost(order):
        total = 0.0
        for i, a in enumerate(order):
            for b in order[i + 1 :]:
                for rank, w in zip(ranks, weights, strict=True):
                    total += w if rank[b] < rank[a] else (w / 2 if rank[a] == rank[b] else 0.0)
        return total

    costs = {order: cost(order) for order in itertools.permutations(items)}
    best = min(costs.values())
    return best, [order for order, c in costs.items() if math.isclose(c, best, abs_tol=1e-9)]


def test_kemeny_matches_brute_force_over_permutations():
    rng = random.Random(11)
    for trial in range(40):
        n = rng.randint(2, 6)
        rankings = []
        for _ in range(rng.randint(1, 5)):
            order = rng.sample(range(n), n)
            if trial % 2 and n > 2:  # half the trials include a tie
                rankings.append([[order[0], order[1]], *([x] for x in order[2:])])
            else:
                rankings.append(strict(*order))
        weights = [rng.choice([0.25, 0.5, 1.0, 2.0]) for _ in rankings]
        best, optimal = _brute_force_kemeny(rankings, weights)
        result = weighted_kemeny(rankings, weights)
        assert result.objective * sum(weights) == pytest.approx(best)
        assert tuple(group[0] for group in result.ordering) in optimal


def test_kemeny_refuses_more_than_eight_items():
    ranking = strict(*range(KEMENY_MAX_ITEMS + 1))
    with pytest.raises(AggregationError, match="limited to 8 items"):
        weighted_kemeny([ranking])
    assert weighted_kemeny([strict(*range(KEMENY_MAX_ITEMS))]).ordering == strict(*range(8))


def test_plackett_luce_two_items_has_closed_form():
    # a beats b 3 times out of 4: the MLE strength ratio is 3, centred log-strengths are +-ln(3)/2.
    rankings = [strict("a", "b")] * 3 + [strict("b", "a")]
    result = plackett_luce(rankings, prior_strength=0.0)
    assert result.scores["a"] == pytest.approx(math.log(3) / 2)
    assert result.scores["b"] == pytest.approx(-math.log(3) / 2)
    assert result.objective == pytest.approx(3 * math.log(3 / 4) + math.log(1 / 4))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_plackett_luce_with_unit_weights_equals_choix(alpha):
    rng = np.random.default_rng(5)
    data = [tuple(int(x) for x in rng.permutation(6)) for _ in range(25)]
    expected = choix.mm_rankings(6, data, alpha=alpha, tol=1e-12)
    result = plackett_luce([strict(*ranking) for ranking in data], prior_strength=alpha)
    assert [result.scores[i] for i in range(6)] == pytest.approx(expected.tolist(), abs=1e-8)


def test_plackett_luce_ties_equal_average_over_tie_breaks():
    tied = [[[0, 1, 2], [3]], [[3], [1], [0, 2]], strict(2, 3, 0, 1)]
    expanded, weights = [], []
    for ranking in tied:
        variants = list(itertools.product(*(itertools.permutations(g) for g in ranking)))
        for variant in variants:
            expanded.append(strict(*itertools.chain.from_iterable(variant)))
            weights.append(1.0 / len(variants))
    assert plackett_luce(tied).scores == pytest.approx(plackett_luce(expanded, weights).scores)


def test_plackett_luce_without_prior_refuses_when_mle_does_not_exist():
    with pytest.raises(AggregationError, match="MLE does not exist"):
        plackett_luce([strict(0, 1, 2)] * 2, prior_strength=0.0)


@pytest.mark.parametrize(
    ("rankings", "weights", "message"),
    [
        ([], None, "at least one ranking"),
        ([strict(0, 1), strict(0, 2)], None, "foreign items"),
        ([strict(0, 1), strict(1, 0)], [1.0], "got 1 weights for 2 rankings"),
        ([strict(0, 1), strict(1, 0)], [1.0, -1.0], "non-negative"),
        ([strict(0, 1), strict(1, 0)], [1.0, math.nan], "finite"),
        ([strict(0, 1), strict(1, 0)], [0.0, 0.0], "sum to zero"),
    ],
)
def test_bad_inputs_are_rejected_with_clear_errors(rankings, weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_borda(rankings, weights)


def test_unknown_method_is_rejected():
    with pytest.raises(AggregationError, match="unknown aggregation method 'median'"):
        aggregate("median", [strict(0, 1)])


def _strict(*items):
    return [[item] for item in items]


def test_tie_groups_merge_a_three_two_split_only_when_the_margin_allows_it():
    # Five equal experts; a and b are split 3-2, b and c 5-0.
    rankings = [_strict("a", "b", "c")] * 3 + [_strict("b", "a", "c")] * 2
    result = weighted_borda(rankings)
    assert result.ordering == [["a"], ["b"], ["c"]]
    assert consensus_tie_groups(result, rankings, margin=0.1) == [["a", "b"], ["c"]]
    assert consensus_tie_groups(result, rankings, margin=0.0) == [["a"], ["b"], ["c"]]


def test_tie_groups_keep_a_four_one_split_strict():
    rankings = [_strict("a", "b")] * 4 + [_strict("b", "a")]
    result = weighted_borda(rankings)
    assert consensus_tie_groups(result, rankings, margin=0.1) == [["a"], ["b"]]


def test_tie_groups_with_no_margin_tie_an_exactly_even_split_of_equal_scores():
    rankings = [_strict("a", "b"), _strict("b", "a")]
    result = weighted_borda(rankings)
    assert consensus_tie_groups(result, rankings) == [["a", "b"]]


def test_tie_groups_refuse_a_margin_that_would_tie_everything():
    rankings = [_strict("a", "b")]
    with pytest.raises(AggregationError):
        consensus_tie_groups(weighted_borda(rankings), rankings, margin=0.5)
