"""Off-policy corrections, by hand: TIS per token and per sequence, masking, AReaL decoupled weights."""
import math

import pytest
import torch

from trainers.grpo.loss import LossConfig, LossInputs, policy_loss
from trainers.offpolicy import OFFPOLICY

TESTED = {"none", "tis_token", "tis_seq", "mask", "decoupled"}
# log(pi_old / pi_behav) per token: [ln 3, ln 0.5] and [ln 1.5, 0 (padding)]
OLD = torch.tensor([[math.log(3.0), math.log(0.5)], [math.log(1.5), 0.0]])
BEHAV = torch.zeros(2, 2)
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])


def run(name, **kw):
    return OFFPOLICY.get(name)(OLD, BEHAV, MASK, LossConfig(**kw))


def test_none():
    w, keep, m = run("none")
    assert w.tolist() == [[1, 1], [1, 1]] and torch.equal(keep, MASK)
    # weights 3, 0.5, 1.5 over 3 tokens -> mean 5/3, max 3
    assert m["offpolicy/is_weight_mean"] == pytest.approx(5 / 3) and m["offpolicy/is_weight_max"] == pytest.approx(3.0)


def test_tis_token_caps_at_C():
    w, keep, m = run("tis_token", is_cap=2.0)
    assert w[0].tolist() == pytest.approx([2.0, 0.5]) and w[1, 0].item() == pytest.approx(1.5)
    assert m["offpolicy/capped_frac"] == pytest.approx(1 / 3)


def test_tis_seq_uses_the_sequence_product():
    # seq 0: 3 * 0.5 = 1.5 (under the cap), seq 1: 1.5 (padding excluded); with cap 1.2 both become 1.2
    w, _, _ = run("tis_seq", is_cap=2.0)
    assert w[0].tolist() == pytest.approx([1.5, 1.5]) and w[1].tolist() == pytest.approx([1.5, 1.5])
    w, _, _ = run("tis_seq", is_cap=1.2)
    assert w[0].tolist() == pytest.approx([1.2, 1.2])


def test_mask_drops_out_of_range_tokens():
    w, keep, m = run("mask", mask_low=0.6, mask_high=2.0)
    # 3 > 2 dropped, 0.5 < 0.6 dropped, 1.5 kept, padding stays 0
    assert keep.tolist() == [[0.0, 0.0], [1.0, 0.0]] and w.tolist() == [[1, 1], [1, 1]]
    assert m["offpolicy/masked_frac"] == pytest.approx(2 / 3)


def test_decoupled_weights_and_cap():
    w, keep, _ = run("decoupled", behav_weight_cap=2.5)
    assert w[0].tolist() == pytest.approx([3.0, 0.5])
    assert keep.tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_weights_multiply_the_pg_term():
    # A = 1, current == old (ratio 1): per-token pg = -1; with TIS token weights [2, 0.5] and token_mean over
    # seq 0 only: (-2 - 0.5) / 2 = -1.25
    lp = torch.tensor([[math.log(3.0), math.log(0.5)]])
    x = LossInputs(logprobs=lp, old_logprobs=lp, behav_logprobs=torch.zeros(1, 2), advantages=torch.tensor([1.0]),
                   response_mask=torch.ones(1, 2))
    loss, m = policy_loss(x, LossConfig(offpolicy="tis_token", is_cap=2.0, agg="token_mean"))
    assert loss.item() == pytest.approx(-1.25)
    assert "offpolicy/kl_behav_old" in m


def test_every_registered_correction_is_tested():
    assert set(OFFPOLICY.names()) <= TESTED
