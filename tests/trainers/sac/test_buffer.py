"""Replay buffer (ring, sampling) and the env runner that feeds it (auto-reset steps are not transitions)."""
import numpy as np
import pytest

from trainers.sac.buffer import ReplayBuffer, Transitions
from trainers.sac.runner import EnvRunner


def _transitions(start: int, n: int) -> Transitions:
    x = np.arange(start, start + n, dtype=np.float32)
    return Transitions(x[:, None].repeat(3, 1), x[:, None] * 10, x, x[:, None].repeat(3, 1) + 0.5, np.zeros(n, np.float32))


def test_ring_overwrites_oldest_first():
    buf = ReplayBuffer(5, obs_dim=3, act_dim=1)
    buf.add(_transitions(0, 3))
    assert len(buf) == 3 and buf.rewards[:3].tolist() == [0, 1, 2]
    buf.add(_transitions(3, 4))  # 3, 4 fill slots 3, 4; 5, 6 overwrite slots 0, 1
    assert len(buf) == 5 and buf.pos == 2
    assert buf.rewards.tolist() == [5, 6, 2, 3, 4]
    assert buf.actions[:, 0].tolist() == [50, 60, 20, 30, 40]
    buf.add(_transitions(100, 12))  # more than the capacity: only the newest 5 survive
    assert sorted(buf.rewards.tolist()) == [107, 108, 109, 110, 111] and len(buf) == 5


def test_sample_shapes_and_only_filled_rows():
    buf = ReplayBuffer(100, obs_dim=3, act_dim=1)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4, np.random.default_rng(0))
    buf.add(_transitions(1, 10))
    b = buf.sample(64, np.random.default_rng(0))
    assert b.obs.shape == (64, 3) and b.actions.shape == (64, 1) and b.rewards.shape == (64,)
    assert b.next_obs.shape == (64, 3) and b.terminated.shape == (64,)
    assert set(b.rewards.tolist()) <= set(range(1, 11))  # never the zero rows past `size`
    assert np.allclose(b.next_obs.numpy(), b.obs.numpy() + 0.5)  # rows stay aligned


def test_runner_skips_autoreset_steps():
    runner = EnvRunner("Pendulum-v1", seed=0)  # truncated at 200 steps, never terminated
    t, episodes = runner.run(None, 450)
    assert len(t) == 450 and runner.stepped == 450
    assert [n for _, n in episodes] == [200, 200]
    assert np.all(t.terminated == 0)
    assert np.all((t.actions >= -2) & (t.actions <= 2))
    # consecutive transitions chain s' -> s, except across the two episode boundaries
    chained = np.all(np.isclose(t.next_obs[:-1], t.obs[1:]), axis=1)
    assert np.nonzero(~chained)[0].tolist() == [199, 399]
    assert sum(t.rewards[:200]) == pytest.approx(episodes[0][0], rel=1e-5)
    runner.close()


def test_runner_marks_true_terminals():
    runner = EnvRunner("InvertedPendulum-v4", seed=0)  # random actions topple it within a few steps
    t, episodes = runner.run(None, 100)
    assert len(episodes) >= 2
    assert int(t.terminated.sum()) == len(episodes)
    runner.close()
