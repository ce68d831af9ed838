"""Policy losses, aggregation modes and the KL term, by hand; gradients of clipped tokens; the micro-batch
contract the trainer relies on. The losses read the job config's `trainer` section itself."""
import math

import pytest
import torch
from pydantic import ValidationError

from trainers.grpo.config import TrainerConfig
from trainers.grpo.loss import POLICY_LOSSES, LossInputs, aggregate, k3, micro_batch_share, policy_loss

e = math.exp


def cfg(**kw) -> TrainerConfig:
    """The `trainer` section with these knobs; no off-policy correction unless given (a GRPOConfig would resolve
    the unset one from max_staleness)."""
    return TrainerConfig(**{"offpolicy": "none", **kw})


def inputs(logprobs, old, adv, mask, ref=None, behav=None, grad=False):
    t = lambda x: torch.tensor(x, dtype=torch.float32)
    return LossInputs(logprobs=t(logprobs).requires_grad_(grad), old_logprobs=t(old),
                      behav_logprobs=t(old if behav is None else behav), advantages=t(adv), response_mask=t(mask),
                      ref_logprobs=None if ref is None else t(ref))


# The running example: 2 sequences x 3 tokens, A = [+1, -1], the last token of sequence 1 is padding.
# log ratio (current - old) = [[0.5, 0.1, -0.5], [0.5, -0.5, pad]]
# ratio = [[1.648721, 1.105171, 0.606531], [1.648721, 0.606531, -]], clip range [0.8, 1.2]
# per-token loss -min(ratio A, clip(ratio) A) = max(-ratio A, -clip(ratio) A):
#   seq 0 (A=+1): t0 max(-1.648721, -1.2) = -1.2 (clipped); t1 -1.105171 (inside);
#                 t2 max(-0.606531, -0.8) = -0.606531 (the lower clip does not bind for A > 0)
#   seq 1 (A=-1): t0 max(1.648721, 1.2) = 1.648721 (the upper clip does not bind for A < 0);
#                 t1 max(0.606531, 0.8) = 0.8 (clipped)
# sums: seq 0 = -2.911702, seq 1 = 2.448721
LP = [[0.5, 0.1, -0.5], [0.5, -0.5, 9.0]]  # 9.0 at the padding must be ignored
OLD = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
ADV = [1.0, -1.0]
MASK = [[1, 1, 1], [1, 1, 0]]
PG = [[-1.2, -e(0.1), -e(-0.5)], [e(0.5), 0.8]]

HAND_CASES = {
    # -(A * logprobs): seq 0 (A=2) -(2 * [-1, -3]) = [2, 6] -> mean 4; seq 1 (A=-1) -(-1 * -2) = -2 (padding -5
    # ignored) -> mean -2; seq_mean_token_mean = (4 - 2) / 2 = 1
    "reinforce": (inputs([[-1.0, -3.0], [-2.0, -5.0]], [[0.0, 0.0], [0.0, 0.0]], [2.0, -1.0], [[1, 1], [1, 0]]),
                  cfg(loss="reinforce", loss_agg="seq_mean_token_mean"), 1.0),
    # the running example, token_mean: (-2.911702 + 2.448721) / 5 = -0.0925961
    "ppo_clip": (inputs(LP, OLD, ADV, MASK), cfg(loss="ppo_clip", loss_agg="token_mean"), -0.0925961),
}
COVERED = set(HAND_CASES)  # test_registries.py checks every registered name is in here


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_example(name):
    x, c, expected = HAND_CASES[name]
    assert c.loss == name
    loss, m = policy_loss(x, c)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["loss/pg"] == pytest.approx(expected, abs=1e-6) and m["loss/kl"] == 0.0


def test_aggregation_modes_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])  # 100 at masked positions must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # token_mean: (1 + 2 + 3 + 4) / 4 tokens = 2.5
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx(2.5)
    # seq_mean_token_mean: mean(6 / 3, 4 / 1) = mean(2, 4) = 3
    assert aggregate(loss, mask, "seq_mean_token_mean").item() == pytest.approx(3.0)
    # seq_mean_token_sum_norm, max_len 4: mean(6 / 4, 4 / 4) = mean(1.5, 1) = 1.25
    assert aggregate(loss, mask, "seq_mean_token_sum_norm", max_len=4).item() == pytest.approx(1.25)
    # the Dr. GRPO normaliser is the constant, not the padded width 3 nor the lengths: max_len 10 -> mean(0.6, 0.4)
    assert aggregate(loss, mask, "seq_mean_token_sum_norm", max_len=10).item() == pytest.approx(0.5)
    # a sequence with no tokens counts as 0 in the seq means: mean(2, 4, 0) = 2
    loss3, mask3 = torch.cat([loss, torch.ones(1, 3)]), torch.cat([mask, torch.zeros(1, 3)])
    assert aggregate(loss3, mask3, "seq_mean_token_mean").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="max_len"):
        aggregate(loss, mask, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="did you mean 'token_mean'"):
        aggregate(loss, mask, "token_mea")


@pytest.mark.parametrize("agg,max_len,expected", [
    ("token_mean", None, (-2.911702 + 2.448721) / 5),  # -0.0925961
    ("seq_mean_token_mean", None, (-2.911702 / 3 + 2.448721 / 2) / 2),  # (-0.970567 + 1.224361) / 2 = 0.126897
    ("seq_mean_token_sum_norm", 4, (-2.911702 / 4 + 2.448721 / 4) / 2),  # -0.0578725
])
def test_ppo_clip_running_example_each_aggregation(agg, max_len, expected):
    loss, m = policy_loss(inputs(LP, OLD, ADV, MASK), cfg(loss_agg=agg), max_len)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # clipped: seq 0 t0 (upper side, A > 0) and seq 1 t1 (lower side, A < 0) -> 2 of 5 tokens
    assert m["actor/clipfrac"] == pytest.approx(2 / 5) and m["actor/clipfrac_dual"] == 0.0
    # ratio_mean = (1.648721 + 1.105171 + 0.606531 + 1.648721 + 0.606531) / 5 = 1.123135
    assert m["actor/ratio_mean"] == pytest.approx(1.123135, abs=1e-6)
    # approx_kl = mean((r - 1) - log r) = (0.148721 + 0.005171 + 0.106531 + 0.148721 + 0.106531) / 5 = 0.103135
    assert m["actor/approx_kl"] == pytest.approx(0.103135, abs=1e-6)


def test_per_token_ppo_clip_values():
    pg, _ = POLICY_LOSSES.get("ppo_clip")(inputs(LP, OLD, ADV, MASK), cfg())
    assert pg[0].tolist() == pytest.approx(PG[0], abs=1e-6)
    assert pg[1, :2].tolist() == pytest.approx(PG[1], abs=1e-6)


def test_clipped_tokens_get_zero_gradient():
    x = inputs(LP, OLD, ADV, MASK, grad=True)
    loss, _ = policy_loss(x, cfg(loss_agg="token_mean"))
    loss.backward()
    # d/dlp of -A ratio / 5 tokens = -A ratio / 5 where not clipped, 0 where clipped or padding:
    # seq 0: t0 clipped -> 0; t1 -1.105171 / 5 = -0.221034; t2 -0.606531 / 5 = -0.121306
    # seq 1: t0 +1.648721 / 5 = 0.329744; t1 clipped -> 0; padding -> 0
    assert x.logprobs.grad.tolist() == [pytest.approx([0.0, -0.221034, -0.121306], abs=1e-6),
                                        pytest.approx([0.329744, 0.0, 0.0], abs=1e-6)]


def test_clip_higher_moves_only_the_upper_bound():
    # A=+1, ratio e^0.25 = 1.284025: clipped at 1.2 with clip_high 0.2, at 1.28 with DAPO's 0.28
    up = inputs([[0.25]], [[0.0]], [1.0], [[1]])
    assert policy_loss(up, cfg(clip_high=0.2))[0].item() == pytest.approx(-1.2)
    assert policy_loss(up, cfg(clip_high=0.28))[0].item() == pytest.approx(-1.28)
    # A=-1, ratio e^-0.5 = 0.606531: lower clip 1 - 0.2 = 0.8 binds either way -> 0.8
    down = inputs([[-0.5]], [[0.0]], [-1.0], [[1]])
    assert policy_loss(down, cfg(clip_high=0.28))[0].item() == pytest.approx(0.8)
    # clip_low 0.3 -> 0.7
    assert policy_loss(down, cfg(clip_low=0.3))[0].item() == pytest.approx(0.7)


def test_dual_clip_caps_negative_advantages_only():
    # A=-1, ratio e^2 = 7.389056: plain PPO max(7.389, 1.2) = 7.389; dual clip c=3: min(7.389, 3) = 3, zero grad
    x = inputs([[2.0]], [[0.0]], [-1.0], [[1]], grad=True)
    assert policy_loss(x, cfg())[0].item() == pytest.approx(e(2.0), rel=1e-6)
    loss, m = policy_loss(x, cfg(dual_clip_c=3.0))
    assert loss.item() == pytest.approx(3.0) and m["actor/clipfrac_dual"] == 1.0
    loss.backward()
    assert x.logprobs.grad.item() == 0.0
    # A=+1 with the same ratio: dual clip does not apply, loss -1.2 (upper clip)
    assert policy_loss(inputs([[2.0]], [[0.0]], [1.0], [[1]]), cfg(dual_clip_c=3.0))[0].item() == \
        pytest.approx(-1.2)
    # A=-1, ratio e^1 = 2.718 < c: dual clip does not bind -> 2.718
    assert policy_loss(inputs([[1.0]], [[0.0]], [-1.0], [[1]]), cfg(dual_clip_c=3.0))[0].item() == \
        pytest.approx(e(1.0), rel=1e-6)


def test_k3_kl_value_penalty_and_gradient():
    # ref - cur = -0.5: k3 = e^-0.5 + 0.5 - 1 = 0.106531; ref - cur = +0.5: e^0.5 - 0.5 - 1 = 0.148721
    assert k3(torch.tensor(-0.5), torch.tensor(0.0)).item() == pytest.approx(0.106531, abs=1e-6)
    assert k3(torch.tensor(0.5), torch.tensor(0.0)).item() == pytest.approx(0.148721, abs=1e-6)
    assert k3(torch.tensor(0.3), torch.tensor(0.3)).item() == 0.0
    # A = 0 so pg = 0; two tokens with ref - cur = [-0.5, +0.5], token_mean KL = (0.106531 + 0.148721) / 2 = 0.127626
    x = inputs([[0.0, 0.0]], [[0.0, 0.0]], [0.0], [[1, 1]], ref=[[-0.5, 0.5]], grad=True)
    loss, m = policy_loss(x, cfg(kl_coef=0.1, loss_agg="token_mean"))
    assert m["loss/kl"] == pytest.approx(0.127626, abs=1e-6)
    assert loss.item() == pytest.approx(0.1 * 0.127626, abs=1e-6) and m["loss/pg"] == 0.0
    # d k3 / d cur = 1 - e^(ref - cur): [1 - 0.606531, 1 - 1.648721] = [0.393469, -0.648721], x 0.1 / 2 tokens
    loss.backward()
    assert x.logprobs.grad[0].tolist() == pytest.approx([0.0196735, -0.0324361], abs=1e-6)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(inputs([[0.0]], [[0.0]], [0.0], [[1]]), cfg(kl_coef=0.1))


def test_reinforce_gradient_is_minus_advantage():
    # d/dlp of -(A lp) / 3 tokens (token_mean) = -A / 3: seq 0 (A=2) -> -0.6667 each; seq 1 (A=-1) -> +0.3333
    x = inputs([[-1.0, -3.0], [-2.0, -5.0]], [[0.0, 0.0], [0.0, 0.0]], [2.0, -1.0], [[1, 1], [1, 0]], grad=True)
    loss, m = policy_loss(x, cfg(loss_agg="token_mean", loss="reinforce"))
    loss.backward()
    assert x.logprobs.grad.tolist() == [pytest.approx([-2 / 3, -2 / 3]), pytest.approx([1 / 3, 0.0])]
    assert m["actor/clipfrac"] == 0.0


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("offpolicy", ["none", "mask"])
def test_micro_batches_weighted_by_share_equal_the_full_batch(agg, offpolicy):
    # the contract trainers/grpo/update.py::update relies on: loss(full) = sum_mb loss(mb) * share(mb), share =
    # mb tokens / all tokens for token_mean, mb sequences / B otherwise, even when the correction drops tokens
    g = torch.Generator().manual_seed(0)
    B, L = 6, 5
    lp, old = -torch.rand(B, L, generator=g), -torch.rand(B, L, generator=g)
    behav = old + 0.8 * torch.randn(B, L, generator=g)  # big mismatch so `mask` drops some tokens
    mask = (torch.rand(B, L, generator=g) > 0.3).float()
    adv = torch.randn(B, generator=g)
    c = cfg(loss_agg=agg, offpolicy=offpolicy, mask_low=0.5, mask_high=2.0)
    mk = lambda s: LossInputs(lp[s], old[s], behav[s], adv[s], mask[s])
    full, m = policy_loss(mk(slice(0, B)), c, max_len=L)
    if offpolicy == "mask":
        assert 0 < m["offpolicy/masked_frac"] < 1
    parts = 0.0
    for s in (slice(0, 2), slice(2, 6)):
        share, m_share = micro_batch_share(agg, mask[s], s.stop - s.start, float(mask.sum()), B)
        hand = float(mask[s].sum() / mask.sum()) if agg == "token_mean" else (s.stop - s.start) / B
        assert share == pytest.approx(hand) and m_share == share  # no padding rows: metrics weigh the same
        parts = parts + policy_loss(mk(s), c, max_len=L)[0] * share
    assert parts.item() == pytest.approx(full.item(), abs=1e-6)


def test_micro_batch_share_by_hand_with_padding_rows():
    # a micro-batch of 3 rows, the last one padding (mask 0), from a batch of 10 real rows and 40 response tokens
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # token_mean: 5 of the batch's 40 tokens, for the loss and the metrics alike
    assert micro_batch_share("token_mean", mask, 2, 40.0, 10) == (5 / 40, 5 / 40)
    # seq means: the loss is the mean over the 3 rows (padding counts as 0), so 3 / 10; metrics count real rows 2 / 10
    for agg in ("seq_mean_token_mean", "seq_mean_token_sum_norm"):
        assert micro_batch_share(agg, mask, 2, 40.0, 10) == (3 / 10, 2 / 10)


def test_policy_loss_goes_through_the_registries(monkeypatch):
    calls = []

    def spy(x, cfg):
        calls.append(x)
        return torch.zeros_like(x.logprobs), {}

    monkeypatch.setitem(POLICY_LOSSES._items, "ppo_clip", spy)
    policy_loss(inputs(LP, OLD, ADV, MASK), cfg())
    assert len(calls) == 1
    with pytest.raises(KeyError, match="did you mean 'ppo_clip'"):
        policy_loss(inputs(LP, OLD, ADV, MASK), cfg(loss="ppo_clp"))


def test_config_and_inputs_fail_loudly():
    # the section validates its own knobs (tests/rl/test_config.py checks the dotted keys in load_config's errors)
    with pytest.raises(ValidationError, match=r"loss_agg\n.*'token_mean'"):
        cfg(loss_agg="token-mean")
    with pytest.raises(ValidationError, match=r"offpolicy\n.*did you mean 'tis_token'"):
        cfg(offpolicy="tis_tokn")
    with pytest.raises(ValidationError, match="dual_clip_c"):
        cfg(dual_clip_c=0.5)
    with pytest.raises(ValidationError, match="clip_low"):
        cfg(clip_low=1.0)
    with pytest.raises(ValidationError, match="mask_high"):
        cfg(mask_high=0.9)
    with pytest.raises(ValidationError, match="behav_weight_cap"):
        cfg(behav_weight_cap=0.0)
    with pytest.raises(ValueError, match="max_len"):  # Dr. GRPO's normaliser must be given
        policy_loss(inputs(LP, OLD, ADV, MASK), cfg(loss_agg="seq_mean_token_sum_norm"))
    with pytest.raises(ValueError, match="trainer.offpolicy is unset"):  # a bare section: nothing resolved it
        policy_loss(inputs(LP, OLD, ADV, MASK), TrainerConfig())
    with pytest.raises(ValueError, match="advantages"):
        LossInputs(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="old_logprobs"):
        LossInputs(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3))
