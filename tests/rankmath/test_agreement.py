from __future__ import annotations

import math
import random

import krippendorff
import numpy as np
import pytest
from scipy.stats import kendalltau

from rankmath.agreement import (
    AnnotatedTask,
    WeightPolicy,
    kendall_tau_b,
    kendalls_w,
    krippendorff_alpha_by_category,
    krippendorff_alpha_ordinal,
    leave_one_out_tau,
    mean_pairwise_tau,
    needs_more_rankings,
    reliability_matrix,
    tau_against_reference,
    weights_from_agreement,
)
from rankmath.rankformats import OrderingError, normalize_ordering, positions


def strict(*items):
    return [[item] for item in items]


def random_ordering(rng, items):
    items = list(items)
    rng.shuffle(items)
    n = len(items)
    cuts = sorted(rng.sample(range(1, n), rng.randint(0, n - 1)))
    return normalize_ordering(items[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True))


def test_kendalls_w_is_one_for_identical_and_zero_for_reversed_rankings():
    assert kendalls_w([strict(0, 1, 2, 3)] * 3) == pytest.approx(1.0)
    assert kendalls_w([strict(0, 1, 2, 3), strict(3, 2, 1, 0)]) == pytest.approx(0.0)


def test_kendalls_w_applies_tie_correction():
    # Rank sums 2, 4.5, 5.5 -> S = 6.5; T = 2^3 - 2 = 6; W = 12 * 6.5 / (4 * 24 - 2 * 6) = 78 / 84.
    assert kendalls_w([strict(0, 1, 2), [[0], [1, 2]]]) == pytest.approx(13 / 14)
    # Without the correction the same data would give 78 / 96.
    assert kendalls_w([strict(0, 1, 2), [[0], [1, 2]]]) != pytest.approx(78 / 96)


def test_kendalls_w_is_undefined_when_everything_is_tied():
    assert math.isnan(kendalls_w([[[0, 1, 2]], [[0, 1, 2]]]))


def test_kendall_tau_b_hand_example():
    # Pairs (0,1) discordant, (0,2) and (1,2) concordant: (2 - 1) / 3.
    assert kendall_tau_b(strict(0, 1, 2), strict(1, 0, 2)) == pytest.approx(1 / 3)
    assert kendall_tau_b(strict(0, 1, 2), strict(2, 1, 0)) == pytest.approx(-1.0)


def test_kendall_tau_b_equals_scipy_on_orderings_with_ties():
    rng = random.Random(1)
    for _ in range(300):
        n = rng.randint(2, 8)
        a, b = random_ordering(rng, range(n)), random_ordering(rng, range(n))
        rank_a, rank_b = positions(a), positions(b)
        expected = kendalltau([rank_a[i] for i in range(n)], [rank_b[i] for i in range(n)]).statistic
        ours = kendall_tau_b(a, b)
        if math.isnan(expected):
            assert math.isnan(ours)
        else:
            assert ours == pytest.approx(expected, abs=1e-12)


def test_mean_pairwise_tau_averages_all_pairs():
    rankings = [strict(0, 1, 2), strict(0, 1, 2), strict(1, 0, 2)]
    # Pairs: identical (1), and twice 1/3.
    assert mean_pairwise_tau(rankings) == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    with pytest.raises(OrderingError):
        mean_pairwise_tau([strict(0, 1)])


def test_leave_one_out_tau_compares_each_ranking_with_the_others_consensus():
    rankings = [strict(0, 1, 2, 3)] * 3 + [strict(3, 2, 1, 0)]
    for method in ("borda", "kemeny", "plackett_luce"):
        assert leave_one_out_tau(rankings, method=method) == pytest.approx([1.0, 1.0, 1.0, -1.0])


def test_leave_one_out_tau_uses_the_others_weights():
    rankings = [strict(0, 1, 2), strict(0, 1, 2), strict(2, 1, 0)]
    # For ranking 0 the others are a 1:3 mix of 0>1>2 and 2>1>0, so their consensus is 2>1>0.
    taus = leave_one_out_tau(rankings, weights=[1.0, 1.0, 3.0])
    assert taus[0] == pytest.approx(-1.0)
    assert taus[2] == pytest.approx(-1.0)


def test_tau_against_reference_uses_only_items_the_reference_ranks():
    assert tau_against_reference(strict(0, 1, 2, 3), strict(3, 0)) == pytest.approx(-1.0)
    assert tau_against_reference(strict(0, 1, 2, 3), strict(0, 2, 3)) == pytest.approx(1.0)
    with pytest.raises(OrderingError, match="share 1 items"):
        tau_against_reference(strict(0, 1), strict(1, 9))


TASKS = [
    AnnotatedTask("t1", "spatial", {"ann": strict("x", "y", "z"), "bob": strict("y", "x", "z")}),
    AnnotatedTask("t2", "spatial", {"bob": [["x", "y"], ["z"]], "cy": strict("x", "y", "z")}),
    AnnotatedTask("t3", "attribute", {"ann": strict(0, 1, 2), "cy": strict(0, 2, 1), "bob": strict(0, 1, 2)}),
]


def test_reliability_matrix_has_one_unit_per_task_item_and_nan_for_absent_coders():
    matrix = reliability_matrix(TASKS[:2])
    assert matrix.annotators == ["ann", "bob", "cy"]
    assert matrix.units == [("t1", "x"), ("t1", "y"), ("t1", "z"), ("t2", "x"), ("t2", "y"), ("t2", "z")]
    nan = np.nan
    expected = np.array(
        [
            [1, 2, 3, nan, nan, nan],
            [2, 1, 3, 1.5, 1.5, 3],
            [nan, nan, nan, 1, 2, 3],
        ]
    )
    np.testing.assert_array_equal(matrix.data, expected)


def test_krippendorff_alpha_equals_the_package_on_the_hand_built_matrix():
    nan = np.nan
    hand = np.array([[1, 2, 3, nan, nan, nan], [2, 1, 3, 1.5, 1.5, 3], [nan, nan, nan, 1, 2, 3]])
    expected = krippendorff.alpha(reliability_data=hand, level_of_measurement="ordinal")
    assert krippendorff_alpha_ordinal(TASKS[:2]) == pytest.approx(expected)


def test_krippendorff_alpha_is_computed_per_category():
    by_category = krippendorff_alpha_by_category(TASKS)
    assert set(by_category) == {"attribute", "spatial"}
    assert by_category["spatial"] == pytest.approx(krippendorff_alpha_ordinal(TASKS[:2]))
    attribute = np.array([[1, 2, 3], [1, 2, 3], [1, 3, 2]], dtype=float)
    assert by_category["attribute"] == pytest.approx(
        krippendorff.alpha(reliability_data=attribute, level_of_measurement="ordinal")
    )


def test_krippendorff_alpha_is_nan_without_any_doubly_coded_unit():
    single = [AnnotatedTask("t", "spatial", {"ann": strict(0, 1, 2)})]
    assert math.isnan(krippendorff_alpha_ordinal(single))


def test_weights_prefer_gold_then_leave_one_out_then_default():
    policy = WeightPolicy(floor=0.1, ceiling=1.0, min_observations=3, min_gold=2, default_weight=0.5)
    weights = weights_from_agreement(
        loo_taus={"gold": [0.1, 0.1, 0.1], "loo": [0.6, 0.8, 0.7], "new": [0.9], "bad": [-0.5, -0.2, 0.1]},
        gold_taus={"gold": [0.9, 0.7], "loo": [0.2]},
        policy=policy,
    )
    assert weights == pytest.approx({"bad": 0.1, "gold": 0.8, "loo": 0.7, "new": 0.5})


def test_weights_ignore_undefined_taus_and_respect_the_ceiling():
    policy = WeightPolicy(ceiling=0.9, min_observations=2)
    weights = weights_from_agreement(
        {"a": [1.0, 1.0, math.nan], "b": [0.3, math.nan, math.nan]}, policy=policy
    )
    assert weights == pytest.approx({"a": 0.9, "b": 0.5})


@pytest.mark.parametrize(
    "kwargs", [{"floor": 0.0}, {"floor": 0.8, "ceiling": 0.5}, {"default_weight": 2.0}, {"min_gold": 0}]
)
def test_weight_policy_rejects_inconsistent_settings(kwargs):
    with pytest.raises(ValueError):
        WeightPolicy(**kwargs)


@pytest.mark.parametrize(
    ("w", "n", "expected"),
    [
        (math.nan, 1, True),  # one ranking: always ask for a second
        (0.9, 2, False),  # agreement reached
        (0.3, 2, True),  # disagreement, below the cap
        (math.nan, 3, True),  # undefined W counts as disagreement
        (0.3, 5, False),  # cap reached
    ],
)
def test_needs_more_rankings(w, n, expected):
    assert needs_more_rankings(w, n, threshold=0.5, cap=5) is expected


def test_needs_more_rankings_validates_its_policy():
    with pytest.raises(ValueError):
        needs_more_rankings(0.5, 2, threshold=1.5, cap=5)
    with pytest.raises(ValueError):
        needs_more_rankings(0.5, 2, threshold=0.5, cap=1, minimum=2)
