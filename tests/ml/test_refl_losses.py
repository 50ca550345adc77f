"""Loss terms of multi-reward ReFL as pure functions."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from training.ml.refl.losses import denoising_target, kl_penalty, phi, weighted_reward, weighted_reward_loss


def test_relu_margin_is_zero_above_the_margin_and_linear_below():
    r = torch.tensor([-1.0, 1.5, 2.0, 3.0], requires_grad=True)
    out = phi(r, "relu_margin", 2.0)
    assert out.tolist() == [3.0, 0.5, 0.0, 0.0]
    out.sum().backward()
    assert r.grad.tolist() == [-1.0, -1.0, 0.0, 0.0]


def test_softplus_margin_is_smooth_and_never_flat():
    r = torch.tensor([-1.0, 2.0, 6.0], requires_grad=True)
    out = phi(r, "softplus_margin", 2.0)
    torch.testing.assert_close(out, torch.nn.functional.softplus(2.0 - r))
    out.sum().backward()
    assert (r.grad < 0).all()


def test_linear_phi_is_the_negated_reward():
    r = torch.tensor([0.5, -2.0])
    assert phi(r, "linear").tolist() == [-0.5, 2.0]
    with pytest.raises(ValueError):
        phi(r, "cubic")  # type: ignore[arg-type]


def test_weighted_reward_loss_is_lambda_times_weighted_sum_of_means():
    rewards = {"attr": torch.tensor([0.0, 1.0]), "spatial": torch.tensor([3.0, -1.0])}
    loss = weighted_reward_loss(rewards, {"attr": 2.0, "spatial": 0.5}, scale=0.1)
    # attr: mean(relu(2 − r)) = 1.5; spatial: mean(0, 3) = 1.5 → 0.1 · (2·1.5 + 0.5·1.5)
    assert float(loss) == pytest.approx(0.375)
    assert float(weighted_reward_loss(rewards, {"attr": 1.0, "spatial": 0.0}, scale=1.0)) == pytest.approx(
        1.5
    )


def test_weighted_reward_loss_rejects_mismatched_names_and_shapes():
    with pytest.raises(ValueError, match="different"):
        weighted_reward_loss({"a": torch.zeros(2)}, {"b": 1.0}, scale=1.0)
    with pytest.raises(ValueError, match="shape"):
        weighted_reward_loss({"a": torch.zeros(2, 1)}, {"a": 1.0}, scale=1.0)


def test_weighted_reward_is_per_sample():
    out = weighted_reward(
        {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([10.0, 0.0])}, {"a": 1.0, "b": 0.1}
    )
    assert out.tolist() == pytest.approx([2.0, 2.0])


def test_kl_penalty_is_mse_and_only_the_prediction_gets_gradient():
    pred = torch.tensor([[1.0, 2.0]], requires_grad=True)
    ref = torch.tensor([[0.0, 0.0]], requires_grad=True)
    out = kl_penalty(pred, ref)
    assert float(out.detach()) == pytest.approx(2.5)
    out.backward()
    assert pred.grad.tolist() == [[1.0, 2.0]] and ref.grad is None
    assert float(kl_penalty(ref.detach(), ref.detach())) == 0.0


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_denoising_target_follows_the_prediction_type(kind):
    scheduler = DDIMScheduler(prediction_type=kind)
    clean, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t = torch.tensor([10, 900])
    target = denoising_target(scheduler, clean, noise, t)
    expected = {"epsilon": noise, "sample": clean, "v_prediction": scheduler.get_velocity(clean, noise, t)}[
        kind
    ]
    torch.testing.assert_close(target, expected)
