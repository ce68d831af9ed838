"""Off-policy corrections by hand: TIS per token and per sequence, prime-rl masking, AReaL decoupled weights, their
metrics, and how policy_loss applies them, with the knobs set from YAML/CLI."""
import math

import pytest
import torch

from rl.config import load_config
from trainers.grpo.config import TrainerConfig
from trainers.grpo.loss import LossInputs, policy_loss
from trainers.offpolicy import OFFPOLICY

ln = math.log
# 2 sequences x 3 tokens; the last token of sequence 1 is padding (old 100 vs behav 0 there must be ignored).
# ratio w = pi_old / pi_behav per token = [[3, 0.5, 1.2], [1.5, 0.1, pad]]
BEHAV = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, 0.0]])
OLD = BEHAV + torch.tensor([[ln(3.0), ln(0.5), ln(1.2)], [ln(1.5), ln(0.1), 100.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
# k3 of KL(behav || old) per token, w - 1 - ln w:
#   3: 2 - 1.098612 = 0.901388   0.5: -0.5 + 0.693147 = 0.193147   1.2: 0.2 - 0.182322 = 0.017678
#   1.5: 0.5 - 0.405465 = 0.094535   0.1: -0.9 + 2.302585 = 1.402585
K3_ALL = (0.901388 + 0.193147 + 0.017678 + 0.094535 + 1.402585) / 5  # 0.521867


def settings(**kw) -> TrainerConfig:
    """GRPO's `trainer` section is an `OffPolicySettings` as it is (the corrections read only its four knobs)."""
    return TrainerConfig(**kw)


def run(name, **kw):
    return OFFPOLICY.get(name)(OLD, BEHAV, MASK, settings(**kw))


def check_none(w, keep, m):
    assert w.tolist() == [[1, 1, 1], [1, 1, 0]] and torch.equal(keep, MASK)
    # raw ratios 3, 0.5, 1.2, 1.5, 0.1 -> mean 6.3 / 5 = 1.26, max 3
    assert m["offpolicy/is_weight_mean"] == pytest.approx(1.26) and m["offpolicy/is_weight_max"] == pytest.approx(3.0)
    assert m["offpolicy/capped_frac"] == 0.0 and m["offpolicy/masked_frac"] == 0.0
    assert m["offpolicy/kl_behav_current"] == pytest.approx(K3_ALL, abs=1e-6)


def check_tis_token(w, keep, m):
    # min(w, 2): [[2, 0.5, 1.2], [1.5, 0.1, 0 (padding)]]; 1 of 5 tokens capped
    assert w.tolist() == [pytest.approx([2.0, 0.5, 1.2]), pytest.approx([1.5, 0.1, 0.0])]
    assert torch.equal(keep, MASK) and m["offpolicy/capped_frac"] == pytest.approx(1 / 5)
    assert m["offpolicy/is_weight_max"] == pytest.approx(3.0)  # reported untruncated


def check_tis_seq(w, keep, m):
    # sequence products: 3 * 0.5 * 1.2 = 1.8 and 1.5 * 0.1 = 0.15 (padding excluded), both under the cap 2
    assert w.tolist() == [pytest.approx([1.8, 1.8, 1.8]), pytest.approx([0.15, 0.15, 0.0])]
    # mean over tokens of the sequence ratio: (3 * 1.8 + 2 * 0.15) / 5 = 1.14; nothing capped
    assert m["offpolicy/is_weight_mean"] == pytest.approx(1.14) and m["offpolicy/capped_frac"] == 0.0
    assert m["offpolicy/kl_behav_current"] == pytest.approx(K3_ALL, abs=1e-6)  # still per token


def check_mask(w, keep, m):
    # bounds [0.2, 2.5]: 3 > 2.5 dropped, 0.1 < 0.2 dropped; 0.5, 1.2, 1.5 kept with weight 1
    assert keep.tolist() == [[0, 1, 1], [1, 0, 0]] and w.tolist() == [[0, 1, 1], [1, 0, 0]]
    assert m["offpolicy/masked_frac"] == pytest.approx(2 / 5) and m["offpolicy/capped_frac"] == 0.0
    # KL on kept tokens only: (0.193147 + 0.017678 + 0.094535) / 3 = 0.101787
    assert m["offpolicy/kl_behav_current"] == pytest.approx(0.101787, abs=1e-6)


def check_decoupled(w, keep, m):
    # weight = w untruncated; cap 2.5 drops the 3 (weight 0); 0.1 stays (only the upper side is capped)
    assert keep.tolist() == [[0, 1, 1], [1, 1, 0]]
    assert w.tolist() == [pytest.approx([0.0, 0.5, 1.2]), pytest.approx([1.5, 0.1, 0.0])]
    assert m["offpolicy/masked_frac"] == pytest.approx(1 / 5) and m["offpolicy/capped_frac"] == 0.0


HAND_CASES = {
    "none": ({}, check_none),
    "tis_token": ({"is_cap": 2.0}, check_tis_token),
    "tis_seq": ({"is_cap": 2.0}, check_tis_seq),
    "mask": ({"mask_low": 0.2, "mask_high": 2.5}, check_mask),
    "decoupled": ({"behav_weight_cap": 2.5}, check_decoupled),
}
COVERED = set(HAND_CASES)  # test_registries.py checks every registered name is in here


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_example(name):
    kw, check = HAND_CASES[name]
    w, keep, m = run(name, **kw)
    assert w.shape == keep.shape == (2, 3) and keep.dtype == MASK.dtype
    check(w, keep, m)


def test_tis_seq_caps_the_product():
    # cap 1.6: seq 0 1.8 -> 1.6 (its 3 tokens capped), seq 1 0.15 stays -> capped_frac 3 / 5
    w, _, m = run("tis_seq", is_cap=1.6)
    assert w[0].tolist() == pytest.approx([1.6] * 3) and w[1, :2].tolist() == pytest.approx([0.15, 0.15])
    assert m["offpolicy/capped_frac"] == pytest.approx(3 / 5)


def test_tis_seq_long_sequence_does_not_overflow():
    # 2000 tokens with log ratio 0.1 each: product e^200 overflows float32, the capped weight is still 2
    old, behav, mask = torch.full((1, 2000), 0.1), torch.zeros(1, 2000), torch.ones(1, 2000)
    w, _, m = OFFPOLICY.get("tis_seq")(old, behav, mask, settings(is_cap=2.0))
    assert torch.allclose(w, torch.full_like(w, 2.0)) and math.isfinite(m["offpolicy/is_weight_mean"])


def test_decoupled_without_cap_keeps_everything():
    w, keep, m = run("decoupled")
    assert torch.equal(keep, MASK) and w[0].tolist() == pytest.approx([3.0, 0.5, 1.2])
    assert m["offpolicy/masked_frac"] == 0.0


def test_mask_defaults_are_prime_rl_bounds():
    # default [0.125, 8]: 0.1 dropped, everything else kept
    w, keep, _ = run("mask")
    assert keep.tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_weights_are_detached(name):
    old = OLD.clone().requires_grad_(True)
    w, keep, _ = OFFPOLICY.get(name)(old, BEHAV, MASK, settings(**HAND_CASES[name][0]))
    assert not w.requires_grad and not keep.requires_grad


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_no_correction_when_old_equals_behav(name):
    # one-epoch on-policy (old := behav): every correction is the identity
    w, keep, m = OFFPOLICY.get(name)(BEHAV, BEHAV, MASK, settings(**HAND_CASES[name][0]))
    assert torch.equal(w, MASK) and torch.equal(keep, MASK) and m["offpolicy/kl_behav_current"] == 0.0


def _x(old, shift=(0.0, 0.0, 0.0)):
    # sequence 0 only: current = old + shift (PPO ratio 1 where shift is 0), A = +1, so per-token pg is -1 there
    lp = (old[:1] + torch.tensor([shift])).requires_grad_(True)
    return LossInputs(logprobs=lp, old_logprobs=old[:1], behav_logprobs=BEHAV[:1], advantages=torch.tensor([1.0]),
                      response_mask=MASK[:1])


def test_policy_loss_multiplies_pg_by_tis_weights():
    # TIS weights [2, 0.5, 1.2], per-token pg -1: token_mean (-2 - 0.5 - 1.2) / 3 = -1.233333
    x = _x(OLD)
    loss, m = policy_loss(x, TrainerConfig(offpolicy="tis_token", is_cap=2.0, loss_agg="token_mean"))
    assert loss.item() == pytest.approx(-3.7 / 3, abs=1e-6) and m["offpolicy/capped_frac"] == pytest.approx(1 / 3)
    # gradient of -w ratio / 3 with ratio 1: -w / 3 = [-0.6667, -0.1667, -0.4]
    loss.backward()
    assert x.logprobs.grad[0].tolist() == pytest.approx([-2 / 3, -0.5 / 3, -0.4], abs=1e-6)


def test_policy_loss_decoupled_matches_areal_normaliser():
    # AReaL: loss = sum(-w_behav * pg over kept tokens) / count(loss mask). Cap 2.5 drops the token with w = 3:
    # (0 - 0.5 - 1.2) / 3 tokens = -0.566667 (the dropped token still counts in the denominator), zero grad there
    x = _x(OLD)
    loss, m = policy_loss(x, TrainerConfig(offpolicy="decoupled", behav_weight_cap=2.5, loss_agg="token_mean"))
    assert loss.item() == pytest.approx(-1.7 / 3, abs=1e-6)
    loss.backward()
    assert x.logprobs.grad[0].tolist() == pytest.approx([0.0, -0.5 / 3, -0.4], abs=1e-6)


def test_policy_loss_mask_drops_tokens_with_huge_ratio_without_nan():
    # token 0 has log ratio old/behav 200 (ratio inf in float32): dropped by `mask`, loss and gradient stay finite;
    # it also has PPO ratio e^0.5 (clipped), which must not count in clipfrac since it is not in the loss;
    # kept tokens pg -1 each -> (0 - 1 - 1) / 3 = -0.666667
    old = OLD[:1].clone()
    old[0, 0] = BEHAV[0, 0] + 200.0
    x = _x(old, shift=(0.5, 0.0, 0.0))
    loss, m = policy_loss(x, TrainerConfig(offpolicy="mask", loss_agg="token_mean"))
    assert loss.item() == pytest.approx(-2 / 3, abs=1e-6) and m["offpolicy/masked_frac"] == pytest.approx(1 / 3)
    loss.backward()
    assert torch.isfinite(x.logprobs.grad).all() and x.logprobs.grad[0, 0].item() == 0.0
    # PPO metrics are over kept tokens: ratio 1 there
    assert m["actor/ratio_mean"] == pytest.approx(1.0) and m["actor/clipfrac"] == 0.0


@pytest.mark.parametrize("overrides,expected", [
    # both sequences, current = old (PPO ratio 1) and A = +1, so each kept token's pg is -weight; token_mean over the
    # 5 response tokens (dropped ones still count in the denominator)
    ([], -4 / 5),  # defaults [0.125, 8]: only the 0.1 is dropped
    (["trainer.offpolicy=mask", "trainer.mask_low=0.2", "trainer.mask_high=2.5"], -3 / 5),  # 3 and 0.1 dropped
    (["trainer.offpolicy=decoupled", "trainer.behav_weight_cap=2.5"], -(0.5 + 1.2 + 1.5 + 0.1) / 5),  # 3 dropped
    (["trainer.offpolicy=tis_token", "trainer.is_cap=1.3"], -(1.3 + 0.5 + 1.2 + 1.3 + 0.1) / 5),  # 3, 1.5 -> 1.3
])
def test_knobs_set_on_the_command_line_reach_the_loss(overrides, expected):
    defaults = [] if overrides else ["trainer.offpolicy=mask"]
    cfg = load_config("configs/grpo_tiny.yaml", ["trainer.loss_agg=token_mean", *defaults, *overrides]).trainer
    x = LossInputs(logprobs=OLD, old_logprobs=OLD, behav_logprobs=BEHAV, advantages=torch.tensor([1.0, 1.0]),
                   response_mask=MASK)
    loss, _ = policy_loss(x, cfg)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
