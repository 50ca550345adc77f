from __future__ import annotations

import random

import pytest

from rankmath.selection import (
    TaskScore,
    binomial_tolerance,
    group_uncertainty,
    in_random_share,
    initial_priority,
    placement_disagreement,
    rankings_to_reach,
    selection_draw,
    task_priorities,
)


def test_the_selection_draw_depends_on_the_prompt_and_image_set_only_and_is_uniform():
    assert selection_draw(7, [3, 1, 2]) == selection_draw(7, [1, 2, 3])
    assert selection_draw(7, [1, 2, 3]) != selection_draw(8, [1, 2, 3])
    draws = [selection_draw(p, [p, p + 1]) for p in range(4000)]
    assert all(0 <= d < 1 for d in draws)
    # Each decile holds 400 ± 4 sd of a Binomial(4000, 0.1).
    for decile in range(10):
        count = sum(decile / 10 <= d < (decile + 1) / 10 for d in draws)
        assert abs(count - 400) <= binomial_tolerance(4000, 0.1)


def test_small_margins_and_contradicting_models_are_uncertain_and_wide_agreement_is_not():
    assert group_uncertainty([[0.0, 0.0, 0.0]]) == pytest.approx(1.0)
    assert group_uncertainty([[10.0, 0.0, -10.0]]) < 0.01
    # Each model alone is confident; together they contradict each other on the one pair.
    assert group_uncertainty([[5.0, -5.0], [-5.0, 5.0]]) == pytest.approx(1.0)
    assert group_uncertainty([[5.0, -5.0], [5.0, -5.0]]) < 0.01
    assert group_uncertainty([[1.0, 0.0]]) < group_uncertainty([[0.2, 0.0]])
    with pytest.raises(ValueError, match="same images"):
        group_uncertainty([[1.0, 0.0], [1.0]])


def test_placement_disagreement_is_the_share_of_placed_pairs_the_experts_reverse():
    experts = [[1], [2], [3, 4]]
    assert placement_disagreement(experts, [(1, 2), (2, 3)]) == 0.0
    assert placement_disagreement(experts, [(2, 1), (2, 3)]) == 0.5
    # A tie or an image the experts never saw says nothing.
    assert placement_disagreement(experts, [(3, 4), (9, 1)]) is None


def test_uncertainty_orders_scored_tasks_by_score_above_unscored_ones():
    tasks = [
        TaskScore(1, draw=0.9, uncertainty=0.1),
        TaskScore(2, draw=0.1, uncertainty=0.8),
        TaskScore(3, draw=0.5, uncertainty=None),
        TaskScore(4, draw=0.3, uncertainty=0.5),
    ]
    priority = task_priorities("uncertainty", tasks)
    assert sorted(priority, key=priority.get, reverse=True) == [2, 4, 1, 3]
    assert all(0 <= p < 1 for p in priority.values())
    assert task_priorities("random", tasks) == {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.3}


def test_a_mix_keeps_its_random_share_by_draw_whatever_the_scores_and_interleaves_it_evenly():
    rng = random.Random(3)
    tasks = [TaskScore(i, draw=rng.random(), uncertainty=rng.random()) for i in range(2000)]
    share = 0.25
    priority = task_priorities("mix", tasks, share)
    shared = {t.task_id for t in tasks if in_random_share(t.draw, share)}
    # The random share's priorities ignore the scores: reversing every score leaves them unchanged.
    flipped = task_priorities("mix", [TaskScore(t.task_id, t.draw, -t.uncertainty) for t in tasks], share)
    assert {i: priority[i] for i in shared} == {i: flipped[i] for i in shared}
    # Any prefix of the queue holds about the share (hypergeometric, within a binomial's 4 sd).
    order = sorted(priority, key=priority.get, reverse=True)
    for n in (200, 500, 1000):
        got = sum(i in shared for i in order[:n])
        assert abs(got - n * len(shared) / len(tasks)) <= binomial_tolerance(n, share)
    with pytest.raises(ValueError, match="share"):
        task_priorities("mix", tasks, 0.0)


def test_a_new_task_starts_uniform_under_every_policy():
    rng = random.Random(5)
    for policy in ("random", "uncertainty", "disagreement", "mix"):
        values = [initial_priority(policy, rng.random(), 0.2) for _ in range(4000)]
        assert all(0 <= v < 1 for v in values)
        assert abs(sum(v < 0.5 for v in values) - 2000) <= binomial_tolerance(4000, 0.5)


def test_rankings_to_reach_interpolates_the_first_crossing():
    curve = [(10, 0.5), (20, 0.6), (30, 0.7)]
    assert rankings_to_reach(curve, 0.65) == pytest.approx(25.0)
    assert rankings_to_reach(curve, 0.4) == 10.0
    assert rankings_to_reach(curve, 0.8) is None
