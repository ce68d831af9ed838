"""SAC losses against hand-computed values (working in the comments), and the tanh-Gaussian log-prob against
torch.distributions."""
import math

import pytest
import torch

from trainers.sac.loss import actor_loss, alpha_loss, q_loss, soft_q_target, squashed_gaussian

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)  # 0.918939


def test_squashed_gaussian_hand_examples():
    # mean 0, std 1, noise 0: u = 0, tanh(u) = 0 -> action = bias = 1; log N(0; 0, 1) = -0.918939,
    # correction log(scale * (1 - 0) + 1e-6) = log 2 -> logp = -0.918939 - 0.693147 = -1.612086
    a, logp = squashed_gaussian(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([2.0]), torch.tensor([1.0]))
    assert a.item() == pytest.approx(1.0)
    assert logp.item() == pytest.approx(-LOG_SQRT_2PI - math.log(2.0), abs=1e-5)
    # mean 0.5, std 0.5, noise 1: u = 1.0, tanh(1) = 0.761594 -> action 0.761594 (scale 1, bias 0)
    # log N = -0.5 * 1^2 - log 0.5 - 0.918939 = -0.725792; correction log(1 - 0.761594^2) = log 0.419974 = -0.867562
    # logp = -0.725792 + 0.867562 = 0.141770
    a, logp = squashed_gaussian(torch.tensor([[0.5]]), torch.tensor([[math.log(0.5)]]), torch.ones(1, 1),
                                torch.ones(1), torch.zeros(1))
    assert a.item() == pytest.approx(math.tanh(1.0), abs=1e-6)
    assert logp.item() == pytest.approx(0.141770, abs=1e-5)


def test_squashed_gaussian_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, log_std, noise = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g) * 0.5, torch.randn(5, 3, generator=g)
    scale, bias = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.0, 1.0, -0.5])
    a, logp = squashed_gaussian(mean, log_std, noise, scale, bias)
    u = mean + log_std.exp() * noise
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(u) - torch.log(scale * (1 - torch.tanh(u) ** 2) + 1e-6)
    assert torch.allclose(a, torch.tanh(u) * scale + bias)
    assert torch.allclose(logp, ref.sum(-1), atol=1e-5)
    assert logp.shape == (5,)


def test_soft_q_target_hand_example():
    # y0 = 1 + 0.9 * (min(3, 4) - 0.5 * (-1)) = 1 + 0.9 * 3.5 = 4.15 ; y1 is terminal: y1 = r = 2
    y = soft_q_target(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([3.0, 5.0]),
                      torch.tensor([4.0, 1.0]), torch.tensor([-1.0, 2.0]), gamma=0.9, alpha=0.5)
    assert y.tolist() == pytest.approx([4.15, 2.0])


def test_q_loss_hand_example_and_target_is_detached():
    # qf1 = ((1-2)^2 + (2-2)^2) / 2 = 0.5 ; qf2 = ((0-2)^2 + (4-2)^2) / 2 = 4 ; loss = 4.5
    q1, q2 = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([0.0, 4.0], requires_grad=True)
    target = torch.tensor([2.0, 2.0], requires_grad=True)
    loss, m = q_loss(q1, q2, target)
    assert loss.item() == pytest.approx(4.5)
    assert m["losses/qf1_loss"] == pytest.approx(0.5) and m["losses/qf2_loss"] == pytest.approx(4.0)
    assert m["losses/qf_loss"] == pytest.approx(2.25) and m["losses/qf1_values"] == pytest.approx(1.5)
    loss.backward()
    assert target.grad is None
    assert q1.grad.tolist() == pytest.approx([-1.0, 0.0])  # d/dq1 mean((q1 - y)^2) = (q1 - y) for B = 2


def test_actor_loss_hand_example():
    # min(Q1, Q2) = [1, 0]; alpha * logp - minQ = [0.2 * -1 - 1, 0.2 * 0.5 - 0] = [-1.2, 0.1] -> mean -0.55
    loss, m = actor_loss(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 0.5]), alpha=0.2)
    assert loss.item() == pytest.approx(-0.55)
    assert m["losses/entropy"] == pytest.approx(0.25)  # -mean(logp) = -(-0.25)


def test_alpha_loss_hand_example_and_direction():
    # alpha = 0.5, logp + target_entropy = [-1 - 1, -3 - 1] = [-2, -4] -> -0.5 * [-2, -4] = [1, 2] -> mean 1.5
    log_alpha = torch.tensor(math.log(0.5), requires_grad=True)
    logp = torch.tensor([-1.0, -3.0], requires_grad=True)
    loss, m = alpha_loss(log_alpha, logp, target_entropy=-1.0)
    assert loss.item() == pytest.approx(1.5) and m["losses/alpha"] == pytest.approx(0.5)
    loss.backward()
    # d/dlog_alpha = -alpha * mean(logp + H) = -0.5 * -3 = +1.5 > 0: entropy 2 above target 1 -> alpha shrinks
    assert log_alpha.grad.item() == pytest.approx(1.5)
    assert logp.grad is None
