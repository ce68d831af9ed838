"""Hand-computed checks of every policy loss, aggregation mode and the KL term."""
import math

import pytest
import torch

from trainers.grpo.loss import POLICY_LOSSES, LossConfig, LossInputs, aggregate, k3, policy_loss

TESTED = {"ppo_clip", "reinforce"}


def inputs(logprobs, old, adv, mask, ref=None):
    t = lambda x: torch.tensor(x, dtype=torch.float32)
    return LossInputs(logprobs=t(logprobs), old_logprobs=t(old), behav_logprobs=t(old), advantages=t(adv),
                      response_mask=t(mask), ref_logprobs=None if ref is None else t(ref))


def test_aggregation_modes():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # token_mean: (1+2+3+4) / 4 tokens = 2.5
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx(2.5)
    # seq_mean_token_mean: mean(6/3, 4/1) = mean(2, 4) = 3
    assert aggregate(loss, mask, "seq_mean_token_mean").item() == pytest.approx(3.0)
    # seq_mean_token_sum_norm with max_len 4: mean(6/4, 4/4) = mean(1.5, 1) = 1.25
    assert aggregate(loss, mask, "seq_mean_token_sum_norm", max_len=4).item() == pytest.approx(1.25)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(loss, mask, "nope")


def test_ppo_clip_hand_example_and_clipfrac():
    # ratios exp(lp - old): token0 = e^0.5 = 1.6487 (A=+1: clipped to 1.2 -> loss -1.2)
    #                       token1 = e^0 = 1 (A=+1: loss -1)
    #                       seq 2 token0 = e^-0.5 = 0.6065 (A=-1: max(0.6065, 0.8) -> loss 0.8, clipped)
    x = inputs([[0.5, 0.0], [-0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [1.0, -1.0], [[1, 1], [1, 0]])
    cfg = LossConfig(clip_low=0.2, clip_high=0.2, agg="token_mean")
    loss, m = policy_loss(x, cfg, "ppo_clip")
    # token mean over 3 tokens: (-1.2 - 1 + 0.8) / 3 = -0.4667
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 0.8) / 3, abs=1e-6)
    assert m["actor/clipfrac"] == pytest.approx(2 / 3)
    assert m["loss/kl"] == 0.0


def test_clip_higher_changes_upper_bound_only():
    # ratio e^0.25 = 1.284: clipped at 1.2 with eps_high 0.2, at 1.28 with DAPO's 0.28
    x = inputs([[0.25]], [[0.0]], [1.0], [[1]])
    low, _ = policy_loss(x, LossConfig(clip_high=0.2, agg="token_mean"))
    high, _ = policy_loss(x, LossConfig(clip_high=0.28, agg="token_mean"))
    assert low.item() == pytest.approx(-1.2) and high.item() == pytest.approx(-1.28)


def test_clipped_tokens_get_no_gradient():
    lp = torch.tensor([[0.5, 0.0]], requires_grad=True)
    x = LossInputs(logprobs=lp, old_logprobs=torch.zeros(1, 2), behav_logprobs=torch.zeros(1, 2),
                   advantages=torch.tensor([1.0]), response_mask=torch.ones(1, 2))
    loss, _ = policy_loss(x, LossConfig(agg="token_mean"))
    loss.backward()
    # token 0 is clipped (ratio 1.65 > 1.2, A > 0): zero grad; token 1: d(-ratio)/dlp /2 = -1 * 1 / 2 = -0.5
    assert lp.grad[0].tolist() == pytest.approx([0.0, -0.5])


def test_dual_clip_caps_negative_advantage_loss():
    # ratio e^2 = 7.389, A = -1: standard loss max(7.389, clip 1.2) = 7.389; dual clip c=3 caps it at 3
    x = inputs([[2.0]], [[0.0]], [-1.0], [[1]])
    loss, m = policy_loss(x, LossConfig(dual_clip_c=3.0, agg="token_mean"))
    assert loss.item() == pytest.approx(3.0)
    plain, _ = policy_loss(x, LossConfig(agg="token_mean"))
    assert plain.item() == pytest.approx(math.exp(2.0), rel=1e-5)


def test_k3_kl_value_and_penalty():
    # ref - cur = -0.5: k3 = e^-0.5 + 0.5 - 1 = 0.10653
    assert k3(torch.tensor(-0.5), torch.tensor(0.0)).item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)
    x = inputs([[0.0]], [[0.0]], [0.0], [[1]], ref=[[-0.5]])
    loss, m = policy_loss(x, LossConfig(kl_coef=0.1, agg="token_mean"))
    # pg = -1 * 0 = 0 (A = 0); loss = 0.1 * 0.10653
    assert loss.item() == pytest.approx(0.1 * (math.exp(-0.5) - 0.5), abs=1e-6)
    assert m["loss/kl"] == pytest.approx(math.exp(-0.5) - 0.5, abs=1e-6)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(inputs([[0.0]], [[0.0]], [0.0], [[1]]), LossConfig(kl_coef=0.1))


def test_reinforce_loss():
    # -(A * lp): seq mean of token means: seq0 -(2 * (-1 + -3) / 2) = 4; seq1 -(-1 * -2) = -2; mean = 1
    x = inputs([[-1.0, -3.0], [-2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [2.0, -1.0], [[1, 1], [1, 0]])
    loss, _ = policy_loss(x, LossConfig(agg="seq_mean_token_mean"), "reinforce")
    assert loss.item() == pytest.approx(1.0)


def test_every_registered_loss_is_tested():
    assert set(POLICY_LOSSES.names()) <= TESTED, set(POLICY_LOSSES.names()) - TESTED
