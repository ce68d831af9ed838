"""PPO: hand-computed losses, GAE against a plain loop, and tiny end-to-end jobs (learning, resume)."""
import json
import math

import pytest
import torch

from rl.cli import launch, main
from trainers.advantages import gae
from trainers.ppo.loss import gaussian_entropy, gaussian_log_prob, ppo_policy_loss, value_loss


def test_policy_loss_hand_example():
    # ratios e^0.5 = 1.6487 (A=+1 -> clipped 1.2 -> -1.2) and e^-0.5 = 0.6065 (A=-1 -> max(0.6065, 0.8) = 0.8)
    new, old, adv = torch.tensor([0.5, -0.5]), torch.zeros(2), torch.tensor([1.0, -1.0])
    loss, m = ppo_policy_loss(new, old, adv, clip_coef=0.2, norm_adv=False)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert m["losses/clipfrac"] == 1.0
    # approx_kl = mean((r - 1) - log r) = ((e^.5 - 1 - .5) + (e^-.5 - 1 + .5)) / 2
    assert m["losses/approx_kl"] == pytest.approx(((math.exp(0.5) - 1.5) + (math.exp(-0.5) - 0.5)) / 2, rel=1e-5)


def test_value_loss_clipping():
    # unclipped (3 - 1)^2 = 4; clipped: old 0 + clamp(3, -0.5, 0.5) = 0.5 -> (0.5 - 1)^2 = 0.25; max = 4 -> 0.5 * 4
    new, old, ret = torch.tensor([3.0]), torch.tensor([0.0]), torch.tensor([1.0])
    assert value_loss(new, old, ret, 0.5).item() == pytest.approx(2.0)
    # new 0.2 toward ret 1 from old 0: unclipped 0.64, clipped same -> 0.32
    assert value_loss(torch.tensor([0.2]), old, ret, 0.5).item() == pytest.approx(0.32)
    assert value_loss(new, old, ret, None).item() == pytest.approx(2.0)


def test_gaussian_log_prob_and_entropy_hand_example():
    half_log_2pi = 0.5 * math.log(2 * math.pi)  # 0.918939
    # 1-D standard normal at 1: -1/2 - log sqrt(2 pi) = -1.418939
    lp = gaussian_log_prob(torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]))
    assert lp.shape == (1,) and lp.item() == pytest.approx(-0.5 - half_log_2pi)
    # 2-D: mean (1, -1), std (2, 1), action (3, -1): z = (1, 0)
    # dim 0: -1/2 - log 2 - 0.918939; dim 1: 0 - 0 - 0.918939; sum -3.031024
    mean, log_std, a = torch.tensor([[1.0, -1.0]]), torch.tensor([[math.log(2.0), 0.0]]), torch.tensor([[3.0, -1.0]])
    assert gaussian_log_prob(mean, log_std, a).item() == pytest.approx(-0.5 - math.log(2) - 2 * half_log_2pi)
    # entropy per dim 1/2 + log sqrt(2 pi) + log std: (1.418939 + log 2) + 1.418939 = 3.531024
    assert gaussian_entropy(log_std).item() == pytest.approx(2 * (0.5 + half_log_2pi) + math.log(2))


def test_gaussian_matches_torch_normal_and_sums_dims():
    g = torch.Generator().manual_seed(0)
    mean, log_std, a = torch.randn(5, 3, generator=g), 0.5 * torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    ref = torch.distributions.Normal(mean, log_std.exp())
    assert torch.allclose(gaussian_log_prob(mean, log_std, a), ref.log_prob(a).sum(-1), atol=1e-5)
    assert torch.allclose(gaussian_entropy(log_std), ref.entropy().sum(-1), atol=1e-5)


def test_gae_matches_plain_loop():
    g = torch.Generator().manual_seed(0)
    T, N, gamma, lam = 7, 3, 0.9, 0.8
    r, v = torch.randn(T, N, generator=g), torch.randn(T, N, generator=g)
    d = (torch.rand(T, N, generator=g) < 0.3).float()
    last_v, last_d = torch.randn(N, generator=g), torch.tensor([0.0, 1.0, 0.0])
    adv, ret = gae(r, v, d, last_v, last_d, gamma, lam)
    for n in range(N):
        acc = 0.0
        for t in reversed(range(T)):
            nd = last_d[n] if t == T - 1 else d[t + 1, n]
            nv = last_v[n] if t == T - 1 else v[t + 1, n]
            delta = r[t, n] + gamma * nv * (1 - nd) - v[t, n]
            acc = delta + gamma * lam * (1 - nd) * acc
            assert adv[t, n].item() == pytest.approx(float(acc), abs=1e-5)
    assert torch.allclose(ret, adv + v)


def test_minibatches_leave_out_auto_reset_steps_and_split_evenly():
    from trainers.ppo.train import minibatches

    resets = torch.zeros(5, 3)  # [T, N]
    resets[2, 0] = resets[4, 1] = resets[0, 2] = 1  # flat indices 6, 13, 2
    torch.manual_seed(0)
    parts = minibatches(resets, 4)
    assert [len(p) for p in parts] == [3, 3, 3, 3]  # 15 - 3 real transitions, 4 near-equal parts
    assert sorted(torch.cat(parts).tolist()) == [i for i in range(15) if i not in (2, 6, 13)]
    assert [len(p) for p in minibatches(torch.zeros(2, 7), 4)] == [4, 4, 3, 3]


@pytest.mark.slow
def test_ppo_cartpole_learns_and_resumes(tmp_path):
    run_dir = tmp_path / "ppo"
    tiny = ["total_timesteps=40960", "env.num_envs=8", "log.progress=false", "log.tensorboard=false", "checkpoint.every=20"]
    s = launch("configs/ppo_cartpole.yaml", [*tiny, f"run_dir={run_dir}"])
    # random CartPole lasts ~20 steps; 40k PPO steps get the greedy policy well past that
    assert s["eval/return_after"] > 2 * max(s["eval/return_before"], 25), s
    assert (run_dir / "checkpoints" / "step-40" / "COMPLETE").exists()
    assert main(["train", "--resume", str(run_dir), "total_timesteps=51200"]) == 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(0, 51))
    assert all(0 < r["charts/autoreset_frac"] < 0.1 for r in rows[1:5])  # episodes end; their next steps are left out
    final = json.loads((run_dir / "summary.json").read_text())
    assert final["iterations"] == 50
    # rl eval of the run: the last checkpoint's greedy policy on the run's own held-out seed gives its final return
    assert main(["eval", str(run_dir)]) == 0
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["checkpoint"].endswith("step-50") and ev["eval/return"] == final["eval/return_after"], (ev, final)
