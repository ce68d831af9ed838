"""Hand-computed checks of the agent trainers' pure functions: ArCHer's targets, losses, advantage and soft update;
multi-turn GRPO's episode loss; filtered BC's filter and loss; the replay buffer."""
import math

import numpy as np
import pytest
import torch

from trainers.agents.loss import bc_loss, grpo_episode_loss, top_fraction
from trainers.archer.buffer import ReplayBuffer, Transition
from trainers.archer.loss import actor_loss, critic_loss, q_targets, soft_update, utterance_advantage


def test_q_targets_use_each_head_its_own_target_and_stop_at_done():
    # r + gamma (1 - d) Vbar_j(s'): [-1 + 0.9*(-2), 0 + 0 (done)] and [-1 + 0.9*(-3), 0]
    y1, y2 = q_targets(torch.tensor([-1.0, 0.0]), torch.tensor([False, True]), torch.tensor([-2.0, -5.0]),
                       torch.tensor([-3.0, -7.0]), gamma=0.9)
    assert torch.allclose(y1, torch.tensor([-2.8, 0.0])) and torch.allclose(y2, torch.tensor([-3.7, 0.0]))


def test_critic_loss_sums_the_four_mses():
    q1, q2 = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    v1, v2 = torch.tensor([0.0, 1.0]), torch.tensor([3.0, 3.0])
    y1, y2 = torch.tensor([2.0, 2.0]), torch.tensor([1.0, -1.0])
    qb1, qb2 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])
    # MSE(q1,y1) = (1+0)/2 = .5; MSE(q2,y2) = (1+1)/2 = 1; MSE(v1,qb1) = (0+1)/2 = .5; MSE(v2,qb2) = (4+4)/2 = 4
    loss, m = critic_loss(q1, q2, v1, v2, y1, y2, qb1, qb2)
    assert loss.item() == pytest.approx(6.0) and m["critic/q_loss"] == pytest.approx(1.5)
    assert m["critic/v_loss"] == pytest.approx(4.5)


def test_utterance_advantage_is_min_q_minus_min_v():
    adv = utterance_advantage(torch.tensor([1.0, -2.0]), torch.tensor([0.5, -1.0]), torch.tensor([-1.0, 0.0]),
                              torch.tensor([0.0, -3.0]))
    assert torch.allclose(adv, torch.tensor([0.5 - (-1.0), -2.0 - (-3.0)]))


def test_actor_loss_is_reinforce_over_utterance_tokens():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    # -mean(2 * (-3), -1 * (-0.5)) = -(-6 + 0.5) / 2 = 2.75; d/d lp[0,0] = -2/2 = -1; masked tokens get 0
    loss, _ = actor_loss(lp, mask, adv)
    loss.backward()
    assert loss.item() == pytest.approx(2.75)
    assert torch.allclose(lp.grad, torch.tensor([[-1.0, -1.0, 0.0], [0.5, 0.0, 0.0]]))


def test_soft_update():
    online, target = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    online.weight.data.fill_(1.0)
    target.weight.data.fill_(0.0)
    soft_update(target, online, 0.1)
    soft_update(target, online, 0.1)
    assert target.weight.item() == pytest.approx(0.1 + 0.9 * 0.1)  # 0.19


def test_grpo_episode_loss_gives_every_policy_token_its_episode_advantage():
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.25, 0.5, 0.5]]))
    behav = torch.log(torch.tensor([[0.5, 0.25, 0.5], [0.25, 0.5, 0.5]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])  # row 1: an observation token at position 1
    adv = torch.tensor([1.0, -2.0])
    # ratios: row 0 [1, 2 (clipped to 1.2 for A>0)], row 1 [1, ., 1]; surr: 1, 1.2 | -2, -2
    loss, m = grpo_episode_loss(lp, behav, adv, mask, clip_eps=0.2, agg="token_mean")
    assert loss.item() == pytest.approx(-(1 + 1.2 - 2 - 2) / 4)
    assert m["loss/clipfrac"] == pytest.approx(0.25)
    # per episode: (1 + 1.2) / 2 = 1.1 and (-2 - 2) / 2 = -2 -> -(1.1 - 2) / 2 = 0.45
    assert grpo_episode_loss(lp, behav, adv, mask, clip_eps=0.2)[0].item() == pytest.approx(0.45)


def test_grpo_episode_loss_matches_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    lp, behav = -torch.rand(3, 5, generator=g), -torch.rand(3, 5, generator=g)
    mask, adv = (torch.rand(3, 5, generator=g) > 0.3).float(), torch.randn(3, generator=g)
    total, n = 0.0, 0
    for b in range(3):
        for k in range(5):
            if mask[b, k]:
                r, a = math.exp(float(lp[b, k] - behav[b, k])), float(adv[b])
                total += min(r * a, min(max(r, 0.8), 1.2) * a)
                n += 1
    assert grpo_episode_loss(lp, behav, adv, mask, agg="token_mean")[0].item() == pytest.approx(-total / n, rel=1e-5)


def test_grpo_episode_loss_with_decoupled_ppo_by_hand():
    """Stale episodes: the ratio is against the trainer's own policy (value 1, no clipping) and each token is
    weighted by pi_prox / pi_behav; behav_weight_cap drops a token (it adds 0 but stays in the normaliser)."""
    from types import SimpleNamespace

    lp = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.25, 0.5, 0.5]])).requires_grad_()
    behav = torch.log(torch.tensor([[0.5, 0.25, 0.5], [0.5, 0.5, 0.05]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    adv = torch.tensor([1.0, -2.0])
    # weights pi_prox / pi_behav on policy tokens: row 0 [1, 2], row 1 [0.5, ., 10]
    settings = SimpleNamespace(behav_weight_cap=None)
    loss, m = grpo_episode_loss(lp, behav, adv, mask, clip_eps=0.2, correction="decoupled", settings=settings)
    # per episode: (1*1 + 2*1) / 2 = 1.5 and (0.5*-2 + 10*-2) / 2 = -10.5 -> -(1.5 - 10.5) / 2 = 4.5
    assert loss.item() == pytest.approx(4.5)
    assert m["loss/clipfrac"] == 0.0 and m["offpolicy/is_weight_max"] == pytest.approx(10.0)
    loss.backward()  # d loss / d lp = -w A / (2 |o_b|) per policy token, 0 elsewhere
    assert torch.allclose(lp.grad, torch.tensor([[-0.25, -0.5, 0.0], [0.25, 0.0, 5.0]]))
    capped, m = grpo_episode_loss(lp, behav, adv, mask, correction="decoupled",
                                  settings=SimpleNamespace(behav_weight_cap=5.0))
    assert capped.item() == pytest.approx(-(1.5 + 0.5 * -2 / 2) / 2)  # the weight-10 token dropped
    assert m["offpolicy/masked_frac"] == pytest.approx(0.25)
    # correction none keeps the old behaviour: the ratio against the behaviour log-probs
    assert grpo_episode_loss(lp, behav, adv, mask)[0].item() != pytest.approx(4.5)


def test_grpo_episode_loss_later_epochs_clip_against_the_first_steps_policy():
    """grpo.epochs > 1 under a correction: the ratio is pi / pi_prox with pi_prox the policy before the batch's first
    step, so a policy that moved past 1 +- eps on a positive-advantage token is clipped (no gradient there)."""
    from types import SimpleNamespace

    prox = torch.log(torch.tensor([[0.5, 0.5]]))
    lp = torch.log(torch.tensor([[0.75, 0.5]])).requires_grad_()  # token 0 moved: ratio 1.5
    behav, mask, adv = prox.clone(), torch.ones(1, 2), torch.tensor([1.0])
    s = SimpleNamespace(behav_weight_cap=None)
    loss, m = grpo_episode_loss(lp, behav, adv, mask, clip_eps=0.2, correction="decoupled", settings=s,
                                prox_logprobs=prox)
    assert loss.item() == pytest.approx(-(1.2 + 1.0) / 2) and m["loss/clipfrac"] == pytest.approx(0.5)
    loss.backward()
    assert lp.grad[0, 0].item() == 0.0 and lp.grad[0, 1].item() == pytest.approx(-0.5)


def test_kl_penalty_is_coef_times_k3_over_policy_tokens():
    from trainers.agents.context import AgentContext
    from trainers.agents.config import AgentConfig

    ctx = AgentContext.__new__(AgentContext)
    ctx.cfg = AgentConfig(policy={"kl_coef": 0.5})
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.9], [0.25, 0.9, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.1], [0.5, 0.1, 0.9]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    k3 = lambda r, p: r / p - math.log(r / p) - 1  # noqa: E731 per token, at tokens sampled from pi
    row0, row1 = (k3(0.25, 0.5) + 0.0) / 2, k3(0.5, 0.25)
    kl, m = ctx.kl_penalty(lp, ref, mask, "episode_mean")
    assert m["loss/kl"] == pytest.approx((row0 + row1) / 2) and kl.item() == pytest.approx(0.5 * (row0 + row1) / 2)
    kl, m = ctx.kl_penalty(lp, ref, mask, "token_mean")
    assert m["loss/kl"] == pytest.approx((k3(0.25, 0.5) + k3(0.5, 0.25)) / 3)


def test_agent_grpo_resolves_its_correction_from_max_staleness():
    from rl.config import load_config

    assert load_config("configs/grpo_agent_twenty_questions.yaml", []).grpo.offpolicy == "none"
    assert load_config("configs/grpo_agent_twenty_questions.yaml", ["max_staleness=1"]).grpo.offpolicy == "decoupled"
    assert load_config("configs/grpo_agent_twenty_questions.yaml", ["max_staleness=1", "grpo.offpolicy=none"]).grpo.offpolicy \
        == "none"


def test_top_fraction_and_bc_loss():
    assert top_fraction(torch.tensor([-5.0, -2.0, -9.0, -2.0]), 0.5).tolist() == [1, 3]
    assert top_fraction(torch.tensor([-5.0, -2.0, -9.0]), 0.1).tolist() == [1]  # at least one
    with pytest.raises(ValueError):
        top_fraction(torch.tensor([1.0]), 0.0)
    loss, _ = bc_loss(torch.tensor([[-1.0, -3.0], [-2.0, -7.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    assert loss.item() == pytest.approx(2.0)  # (1 + 3 + 2) / 3


def test_replay_buffer_ring_and_state():
    buf = ReplayBuffer(3)
    buf.add([Transition([i], f"s{i}", "a", -1.0, "s'", False) for i in range(5)])
    assert [t.state for t in buf.items] == ["s3", "s4", "s2"] and len(buf) == 3
    copy = ReplayBuffer(1)
    copy.load_state_dict(buf.state_dict())
    assert copy.items == buf.items and copy.next == buf.next
    assert all(t in buf.items for t in buf.sample(10, np.random.default_rng(0)))


def test_ptx_data_errors_name_the_file_and_line(tmp_path):
    from rl.errors import ConfigError
    from trainers.agents.ptx import load_episodes

    with pytest.raises(ConfigError, match="policy.ptx_data: no such file"):
        load_episodes(str(tmp_path / "none.jsonl"), tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"episode": [["", "hi\\n"], ["a", "b"]]}\n{"turns": []}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: expected"):
        load_episodes(str(bad), tmp_path)
    with pytest.raises(ConfigError, match="'warm_start' needs a zoo policy"):
        load_episodes("warm_start", tmp_path)
    bad.write_text('{"episode": [["", "hi\\n"], ["a", "b"]]}\n')
    assert load_episodes(str(bad), tmp_path) == [[("", "hi\n"), ("a", "b")]]


def test_ptx_nll_is_the_mean_nll_of_the_utterance_tokens():
    """PtxReplay.nll by hand: a model whose log-probs are known, one episode, mask on its utterance tokens only."""
    from trainers.agents.ptx import PtxReplay

    class Fixed(torch.nn.Module):  # p(3) = 3 / 9 = 1/3 and p(other) = 1/9 of 7 tokens, at every position
        def forward(self, input_ids, attention_mask, use_cache=False):
            from types import SimpleNamespace
            logits = torch.zeros(*input_ids.shape, 7)
            logits[..., 3] = math.log(3)
            return SimpleNamespace(logits=logits)

    r = PtxReplay.__new__(PtxReplay)
    r.ids, r.attn = torch.tensor([[1, 2, 3, 4]]), torch.ones(1, 4, dtype=torch.long)
    r.mask, r.batch_size, r.gen = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), 3, torch.Generator().manual_seed(0)
    # tokens 3 (p 1/3) and 4 (p 1/9) are in the loss; token 2 (position 1) is masked out
    assert r.nll(Fixed()).item() == pytest.approx((math.log(3) + math.log(9)) / 2)
