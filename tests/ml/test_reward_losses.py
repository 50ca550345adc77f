from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from training.ml.reward.config import RewardModelConfig
from training.ml.reward.data import GroupCollator, GroupPair, ImageRef, PromptGroup
from training.ml.reward.losses import listwise_pair_loss, pair_accuracy
from training.ml.reward.model import build_reward_model

torch.set_num_threads(1)


def _naive_loss(
    pair_scores: list[tuple[torch.Tensor, torch.Tensor]], labels, weights, tie_mode: str
) -> torch.Tensor:
    """Reference: one pair at a time, straight from the formula -log σ(R_w - R_l) (symmetric for ties)."""
    num = torch.zeros((), dtype=torch.float64)
    den = torch.zeros((), dtype=torch.float64)
    for (sw, sl), y, w in zip(pair_scores, labels, weights, strict=True):
        if tie_mode == "skip" and y == 0.5:
            continue
        d = (sw - sl).double()
        sig = 1 / (1 + torch.exp(-d))
        term = -(y * torch.log(sig) + (1 - y) * torch.log(1 - sig))
        num = num + w * term
        den = den + w
    return num / den


def _groups(n_groups: int, n_images: int, seed: int) -> list[PromptGroup]:
    gen = torch.Generator().manual_seed(seed)
    prompts = ["a red cube left of a blue ball", "two green dogs", "a cat on a table", "a yellow car"]
    groups = []
    for g in range(n_groups):
        images = tuple(
            ImageRef(key=f"{g}-{i}", tensor=torch.rand(3, 40, 40, generator=gen)) for i in range(n_images)
        )
        pairs = []
        for k, (i, j) in enumerate(itertools.combinations(range(n_images), 2)):
            label = 0.5 if k % 4 == 3 else 1.0
            weight = [1.0, 2.0, 0.5, 0.0, 1.5][k % 5]
            pairs.append(GroupPair(i, j, label, weight) if k % 2 else GroupPair(j, i, label, weight))
        groups.append(
            PromptGroup(g, prompts[g % len(prompts)], "spatial", None, "train", images, tuple(pairs))
        )
    return groups


@pytest.fixture(scope="module")
def model():
    m = build_reward_model(RewardModelConfig.tiny("spatial"), seed=0)
    # ImageReward's head init gives scores ~1e-5 apart; spread them so a mis-paired loss cannot pass.
    with torch.no_grad():
        for layer in m.head.layers:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=0.5)
    return m.eval()


@pytest.mark.parametrize("tie_mode", ["half", "skip"])
def test_listwise_loss_equals_pair_by_pair_model_loss(model, tie_mode):
    groups = _groups(n_groups=3, n_images=6, seed=1)
    collator = GroupCollator(lambda p, s: torch.zeros(3, 1, 1), model.preprocess, "listwise", cache=False)
    batch = collator(groups)
    assert batch.images.shape[0] == 18  # six images per prompt, each encoded once

    input_ids, attention_mask = model.tokenize(batch.prompts)
    with torch.no_grad():
        scores = model(batch.images, batch.prompt_index, input_ids, attention_mask)
        assert scores.std() > 0.1
        listwise = listwise_pair_loss(
            scores, batch.winners, batch.losers, batch.labels, batch.weights, tie_mode
        )

        pair_scores, labels, weights = [], [], []
        for g in groups:
            for p in g.pairs:
                both = torch.stack([g.images[p.winner].tensor, g.images[p.loser].tensor])
                s = model.raw_score([g.prompt, g.prompt], both)
                pair_scores.append((s[0], s[1]))
                labels.append(p.label)
                weights.append(p.weight)
        naive = _naive_loss(pair_scores, labels, weights, tie_mode)
    assert len(pair_scores) == 3 * 15
    assert abs(listwise.item() - naive.item()) < 1e-6


def test_listwise_gradients_equal_pairwise_batching_gradients(model):
    model = copy.deepcopy(model).double()  # float64 so batching noise cannot hide a real difference
    groups = _groups(n_groups=2, n_images=4, seed=2)
    grads = {}
    for batching in ("listwise", "pairwise"):
        model.zero_grad()
        collator = GroupCollator(lambda p, s: torch.zeros(3, 1, 1), model.preprocess, batching, cache=False)
        batch = collator(groups)
        ids, mask = model.tokenize(batch.prompts)
        scores = model(batch.images.double(), batch.prompt_index, ids, mask)
        loss = listwise_pair_loss(scores, batch.winners, batch.losers, batch.labels, batch.weights)
        loss.backward()
        grads[batching] = model.head.layers[0].weight.grad.clone()
    assert torch.allclose(grads["listwise"], grads["pairwise"], atol=1e-12, rtol=1e-9)
    assert grads["listwise"].abs().sum() > 0


def test_strict_pair_loss_is_negative_log_sigmoid_of_score_gap():
    scores = torch.tensor([2.0, -1.0, 0.5])
    loss = listwise_pair_loss(
        scores, torch.tensor([0, 2]), torch.tensor([1, 0]), torch.ones(2), torch.ones(2)
    )
    expected = (-math.log(1 / (1 + math.exp(-3.0))) - math.log(1 / (1 + math.exp(1.5)))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_tie_loss_is_symmetric_and_minimal_at_equal_scores():
    w, tie = torch.tensor([0]), torch.tensor([0.5])
    forward = listwise_pair_loss(torch.tensor([1.3, -0.4]), w, torch.tensor([1]), tie, torch.ones(1))
    swapped = listwise_pair_loss(torch.tensor([-0.4, 1.3]), w, torch.tensor([1]), tie, torch.ones(1))
    equal = listwise_pair_loss(torch.tensor([0.7, 0.7]), w, torch.tensor([1]), tie, torch.ones(1))
    assert forward.item() == pytest.approx(swapped.item(), abs=1e-7)
    assert equal.item() == pytest.approx(math.log(2), abs=1e-7)
    assert forward.item() > equal.item()


def test_pair_weights_give_a_weighted_mean():
    scores = torch.tensor([1.0, 0.0, -2.0])
    winners, losers = torch.tensor([0, 1]), torch.tensor([1, 2])
    single = [
        listwise_pair_loss(scores, winners[i : i + 1], losers[i : i + 1], torch.ones(1), torch.ones(1))
        for i in range(2)
    ]
    weighted = listwise_pair_loss(scores, winners, losers, torch.ones(2), torch.tensor([3.0, 1.0]))
    assert weighted.item() == pytest.approx((3 * single[0].item() + single[1].item()) / 4, abs=1e-6)
    zero_weight = listwise_pair_loss(scores, winners, losers, torch.ones(2), torch.tensor([1.0, 0.0]))
    assert zero_weight.item() == pytest.approx(single[0].item(), abs=1e-7)


def test_skip_ties_ignores_tie_pairs_and_half_mode_counts_them():
    scores = torch.tensor([3.0, 0.0, 1.0], requires_grad=True)
    winners, losers = torch.tensor([0, 2]), torch.tensor([1, 1])
    labels, weights = torch.tensor([1.0, 0.5]), torch.ones(2)
    strict_only = listwise_pair_loss(scores, winners[:1], losers[:1], labels[:1], weights[:1])
    skipped = listwise_pair_loss(scores, winners, losers, labels, weights, tie_mode="skip")
    halved = listwise_pair_loss(scores, winners, losers, labels, weights, tie_mode="half")
    assert skipped.item() == pytest.approx(strict_only.item(), abs=1e-7)
    assert halved.item() != pytest.approx(skipped.item(), abs=1e-3)


def test_all_ties_skipped_gives_zero_loss_that_still_backpropagates():
    scores = torch.tensor([0.3, -0.2], requires_grad=True)
    loss = listwise_pair_loss(
        scores, torch.tensor([0]), torch.tensor([1]), torch.tensor([0.5]), torch.ones(1), "skip"
    )
    loss.backward()
    assert loss.item() == 0.0
    assert scores.grad is not None and torch.all(scores.grad == 0)


def test_loss_rejects_unknown_tie_mode_and_negative_weights():
    s, i = torch.zeros(2), torch.tensor([0])
    with pytest.raises(ValueError, match="tie_mode"):
        listwise_pair_loss(s, i, torch.tensor([1]), torch.ones(1), torch.ones(1), tie_mode="drop")
    with pytest.raises(ValueError, match="weights"):
        listwise_pair_loss(s, i, torch.tensor([1]), torch.ones(1), -torch.ones(1))


def test_pair_accuracy_counts_strict_pairs_and_half_for_exact_ties():
    scores = torch.tensor([1.0, 0.0, 0.0, 2.0])
    stats = pair_accuracy(
        scores, torch.tensor([0, 1, 2, 0]), torch.tensor([1, 3, 1, 3]), torch.tensor([1.0, 1.0, 1.0, 0.5])
    )
    assert stats.strict_pairs == 3
    assert stats.correct == pytest.approx(1.5)
