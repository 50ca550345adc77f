"""The ReFL gate: reward-model accuracy on the current model's own samples, its interval, and the decision."""

from __future__ import annotations

import dataclasses

import pytest

from training.ml.algorithm1.config import FeedbackStageConfig, RoundConfig
from training.ml.algorithm1.gate import (
    GateClosed,
    accuracy_dropped,
    gate_reason,
    pair_accuracy,
    split_own_pairs,
)
from training.ml.algorithm1.steps import check_gate
from training.ml.reward.data import PairRecord


def pair(pair_id: int, prompt_id: int, winner: int, loser: int, label: float = 1.0) -> PairRecord:
    return PairRecord(
        pair_id=pair_id,
        prompt_id=prompt_id,
        prompt=f"prompt {prompt_id}",
        category="spatial",
        subcategory=None,
        split=None,
        winner_id=winner,
        winner_sha256="0" * 64,
        winner_path=f"{winner}.png",
        loser_id=loser,
        loser_sha256="0" * 64,
        loser_path=f"{loser}.png",
        label=label,
    )


def test_pair_accuracy_counts_score_ties_half_skips_expert_ties_and_resamples_prompts():
    records = [
        pair(0, 1, 10, 11),  # right (10 > 11)
        pair(1, 1, 10, 12),  # tie in score: half
        pair(2, 2, 20, 21),  # wrong
        pair(3, 2, 20, 22, label=0.5),  # the experts tied: not counted
    ]
    scores = {10: 3.0, 11: 1.0, 12: 3.0, 20: 0.0, 21: 1.0, 22: 5.0}
    result = pair_accuracy(records, scores)
    assert (result.accuracy, result.pairs, result.prompts) == (0.5, 3, 2)  # (1 + 0.5 + 0) / 3
    # Prompt 1 alone scores 0.75, prompt 2 alone 0: the bootstrap interval spans exactly those.
    assert (result.low, result.high) == (0.0, 0.75)
    assert pair_accuracy(records, scores) == result  # fixed seed: the same data, the same interval
    perfect = pair_accuracy(records[:1], scores)
    assert (perfect.accuracy, perfect.low, perfect.high) == (1.0, 1.0, 1.0)
    empty = pair_accuracy([], {})
    assert (empty.accuracy, empty.pairs) == (None, 0)


def test_own_pairs_of_a_share_of_prompts_are_held_out_and_the_rest_trains():
    own = {10, 11, 12, 20, 21, 30, 31}
    records = [
        pair(0, 1, 10, 11),
        pair(1, 1, 10, 99),  # a gallery image in the pair: always trains
        pair(2, 2, 20, 21),
        pair(3, 3, 30, 31),
        pair(4, 4, 40, 41),  # no own images at all
    ]
    train, gate = split_own_pairs(records, own, share=0.34, salt="s")
    assert len(gate) == 1 and gate[0].prompt_id in (1, 2, 3)  # round(0.34 * 3) = 1 prompt held out
    assert {r.pair_id for r in train} | {r.pair_id for r in gate} == {0, 1, 2, 3, 4}
    assert not {r.pair_id for r in train} & {r.pair_id for r in gate}
    assert split_own_pairs(records, own, share=0.34, salt="s") == (train, gate)
    assert split_own_pairs(records, set(), share=0.5, salt="s") == (records, [])


def _metrics(accuracy, low, high, pairs=120, prefix="own_"):
    return {
        f"{prefix}accuracy": accuracy,
        f"{prefix}accuracy_ci_low": low,
        f"{prefix}accuracy_ci_high": high,
        f"{prefix}pairs": pairs,
    }


def test_the_gate_closes_at_chance_and_says_which_category_and_why():
    good = _metrics(0.78, 0.71, 0.84)
    chance = _metrics(0.55, 0.47, 0.62, pairs=96)
    unmeasured = _metrics(None, None, None, pairs=0)
    assert gate_reason("require", {"spatial": good}) is None
    reason = gate_reason("require", {"spatial": good, "non_spatial": chance})
    assert "non_spatial: 0.550 [0.470, 0.620] on 96 pairs" in reason and "spatial: 0.78" not in reason
    assert "no expert-ranked pairs" in gate_reason("require", {"spatial": unmeasured})
    assert gate_reason("measured", {"spatial": unmeasured, "non_spatial": good}) is None
    assert gate_reason("measured", {"spatial": chance}) is not None
    assert gate_reason("off", {"spatial": chance}) is None
    config = RoundConfig(feedback=FeedbackStageConfig(gate="require"))
    with pytest.raises(GateClosed, match="lower bound not above chance"):
        check_gate(config, {"spatial": chance})
    check_gate(dataclasses.replace(config, feedback=FeedbackStageConfig(gate="measured")), {"spatial": {}})


def test_a_drop_counts_only_when_it_is_large_against_both_intervals():
    before = (0.70, 0.62, 0.78)  # standard error 0.16 / 3.92 = 0.0408
    # Same width after: the difference's standard error is 0.0408 · √2 = 0.0577.
    assert accuracy_dropped(before, (0.55, 0.47, 0.63))  # 0.15 / 0.0577 = 2.6 > 1.645
    assert not accuracy_dropped(before, (0.65, 0.57, 0.73))  # 0.05 / 0.0577 = 0.87
    assert not accuracy_dropped(before, (0.80, 0.72, 0.88))  # a rise
    assert accuracy_dropped((0.6, 0.6, 0.6), (0.59, 0.59, 0.59))  # no spread: any drop
    assert not accuracy_dropped((0.6, 0.6, 0.6), (0.6, 0.6, 0.6))


def test_the_gate_stops_the_loop_when_the_previous_reward_model_fails_on_the_fresh_samples():
    fine = {**_metrics(0.68, 0.60, 0.76), **_metrics(0.70, 0.62, 0.78, prefix="previous_own_")}
    dropped = {**fine, **_metrics(0.55, 0.47, 0.63, prefix="fresh_")}
    held = {**fine, **_metrics(0.65, 0.57, 0.73, prefix="fresh_")}
    reason = gate_reason("measured", {"spatial": dropped})
    assert "spatial: the previous iteration's reward model ranked its own model's samples at 0.700" in reason
    assert "fresh samples at 0.550 [0.470, 0.630] (a significant drop" in reason
    assert gate_reason("measured", {"spatial": held}) is None
    assert gate_reason("measured", {"spatial": fine}) is None  # the first iteration: nothing to compare
    assert gate_reason("off", {"spatial": dropped}) is None
