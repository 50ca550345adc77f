from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankmath.pairs import Pair, disagreements, insert_by_score, pairs_from_ordering
from rankmath.rankformats import OrderingError, positions


def strict(*items):
    return [[item] for item in items]


def test_strict_six_model_ranking_gives_fifteen_preference_pairs():
    pairs = pairs_from_ordering(strict("flux", "sd3", "rpg", "sdxl", "sd15", "instancediffusion"))
    assert len(pairs) == 15
    assert pairs[0] == Pair("flux", "sd3", 1.0)
    assert pairs[-1] == Pair("sd15", "instancediffusion", 1.0)
    rank = {"flux": 0, "sd3": 1, "rpg": 2, "sdxl": 3, "sd15": 4, "instancediffusion": 5}
    assert all(rank[p.winner] < rank[p.loser] and p.label == 1.0 for p in pairs)
    assert len({frozenset((p.winner, p.loser)) for p in pairs}) == 15


def test_tied_pairs_are_skipped_or_labelled_half():
    ordering = [[3], [1, 2], [0]]
    assert pairs_from_ordering(ordering, ties="skip") == [
        Pair(3, 1, 1.0),
        Pair(3, 2, 1.0),
        Pair(3, 0, 1.0),
        Pair(1, 0, 1.0),
        Pair(2, 0, 1.0),
    ]
    half = pairs_from_ordering(ordering, ties="half")
    assert len(half) == 6
    assert Pair(1, 2, 0.5) in half


def test_unknown_tie_mode_is_rejected():
    with pytest.raises(ValueError, match="ties must be"):
        pairs_from_ordering(strict(0, 1), ties="drop")


def test_disagreements_count_pairs_ordered_against_scores():
    assert disagreements(strict("a", "b", "c"), {"a": 1, "b": 2, "c": 0}) == 1
    assert disagreements([["a", "b"], ["c"]], {"a": 0, "b": 5, "c": 1}) == 1
    assert disagreements(strict("a", "b"), {"a": 1, "b": 1}) == 0


HUMAN = strict("a", "b", "c")
SCORES = {"a": 3.0, "b": 2.0, "c": 1.0}


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (3.5, strict("x", "a", "b", "c")),
        (2.5, strict("a", "x", "b", "c")),
        (2.0, strict("a", "b", "x", "c")),  # equal to b: a sample must out-score an item to pass it
        (0.5, strict("a", "b", "c", "x")),
    ],
)
def test_new_item_goes_where_reward_scores_put_it(score, expected):
    assert insert_by_score(HUMAN, SCORES, {"x": score}) == expected


def test_out_of_line_human_item_does_not_trap_the_new_item():
    # Reward disagrees with the experts on b. Gaps after a and after c both cost one disagreement; the
    # lower one wins the tie.
    human = strict("a", "b", "c", "d")
    scores = {"a": 4.0, "b": 0.0, "c": 3.0, "d": 2.0}
    assert insert_by_score(human, scores, {"x": 2.5}) == strict("a", "b", "c", "x", "d")


def test_several_new_items_are_ordered_by_score_then_id():
    result = insert_by_score(HUMAN, SCORES, {"z": 2.5, "y": 2.6, "w": 2.5, "v": 0.0})
    assert result == strict("a", "y", "w", "z", "b", "c", "v")


def test_new_items_are_inserted_between_tie_groups():
    result = insert_by_score([["a"], ["b", "c"]], {"a": 3.0, "b": 1.0, "c": 2.0}, {"x": 2.5})
    assert result == [["a"], ["x"], ["b", "c"]]


def test_insert_rejects_missing_scores_and_already_ranked_items():
    with pytest.raises(OrderingError, match=r"no reward score for ranked items \['c'\]"):
        insert_by_score(HUMAN, {"a": 1.0, "b": 0.0}, {"x": 0.5})
    with pytest.raises(OrderingError, match=r"already ranked: \['b'\]"):
        insert_by_score(HUMAN, SCORES, {"b": 0.5})


def _brute_force_minimum(human, scores, new):
    """Least disagreement over every way of placing the new items into the gaps, in any order."""
    best = None
    for slots in itertools.product(range(len(human) + 1), repeat=len(new)):
        for order in itertools.permutations(new):
            result = []
            for p in range(len(human) + 1):
                result.extend([item] for item in order if slots[new.index(item)] == p)
                if p < len(human):
                    result.append(human[p])
            cost = disagreements(result, scores)
            best = cost if best is None else min(best, cost)
    return best


@st.composite
def insertion_cases(draw):
    n_human = draw(st.integers(1, 5))
    human_items = list(range(n_human))
    order = draw(st.permutations(human_items))
    cuts = sorted(draw(st.sets(st.integers(1, n_human - 1), max_size=n_human - 1))) if n_human > 1 else []
    human = [sorted(order[a:b]) for a, b in zip([0, *cuts], [*cuts, n_human], strict=True)]
    score = st.integers(0, 4).map(float)  # small range: plenty of equal scores
    existing = {item: draw(score) for item in human_items}
    new_items = [f"n{k}" for k in range(draw(st.integers(1, 3)))]
    new = {item: draw(score) for item in new_items}
    return human, existing, new


@settings(max_examples=150, deadline=None)
@given(insertion_cases())
def test_insertion_keeps_human_order_and_minimises_disagreements(case):
    human, existing, new = case
    result = insert_by_score(human, existing, new)
    # Human items keep their groups and relative order.
    assert [group for group in result if group[0] in existing] == human
    # Every new item appears once, as a singleton, and new items are in non-increasing score order.
    new_sequence = [group[0] for group in result if group[0] in new]
    assert sorted(new_sequence) == sorted(new)
    assert all(len(group) == 1 for group in result if group[0] in new)
    assert [new[item] for item in new_sequence] == sorted((new[item] for item in new_sequence), reverse=True)
    # No placement of the new items does better against the reward scores.
    scores = {**existing, **new}
    assert disagreements(result, scores) == _brute_force_minimum(human, scores, list(new))


@settings(max_examples=100, deadline=None)
@given(insertion_cases())
def test_pairs_of_inserted_ranking_agree_with_positions(case):
    human, existing, new = case
    result = insert_by_score(human, existing, new)
    rank = positions(result)
    assert all(rank[p.winner] < rank[p.loser] for p in pairs_from_ordering(result))
