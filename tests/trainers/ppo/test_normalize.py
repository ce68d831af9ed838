"""Running observation normaliser and reward scaler: statistics against numpy over the same data, and the
state round trip that checkpoints rely on."""
import numpy as np
import pytest
import torch

from trainers.ppo.normalize import ObsNormalizer, RewardScaler, RunningMeanStd


def _batches(rng, sizes, dim):
    # far from mean 0 / var 1 with unequal scales, so the prior and the merge both matter
    return [rng.normal([5.0, -3.0, 100.0][:dim], [0.1, 2.0, 30.0][:dim], size=(n, dim)) for n in sizes]


def _with_prior(x, eps=1e-4):
    """numpy mean/var of the data x [n, d] pooled with gym's prior: a pseudo-sample of weight eps, mean 0, var 1."""
    n, m, v = len(x), x.mean(0), x.var(0)
    return n * m / (n + eps), (eps * 1.0 + n * v + m**2 * eps * n / (n + eps)) / (n + eps)


def test_running_mean_std_equals_numpy_over_uneven_batches():
    rng = np.random.default_rng(0)
    batches = _batches(rng, [1, 7, 64, 3, 200], 3)
    everything = np.concatenate(batches)  # [275, 3]
    exact, gym_like = RunningMeanStd((3,), epsilon=0.0), RunningMeanStd((3,))
    for b in batches:
        exact.update(b)
        gym_like.update(b)
    np.testing.assert_allclose(exact.mean, everything.mean(0), rtol=1e-12)
    np.testing.assert_allclose(exact.var, everything.var(0), rtol=1e-10)
    assert exact.count == 275
    # the default pseudo-count 1e-4 (prior mean 0, var 1): 0.1% off numpy's var on the dim with var 0.01
    mean, var = _with_prior(everything)
    np.testing.assert_allclose(gym_like.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(gym_like.var, var, rtol=1e-10)
    assert not np.allclose(gym_like.var, everything.var(0), rtol=1e-4, atol=0)


def test_obs_normalizer_uses_running_stats_and_clips():
    rng = np.random.default_rng(1)
    batches = _batches(rng, [4, 4, 4, 4], 3)
    norm = ObsNormalizer((3,), clip=10.0, enabled=True)
    for b in batches:
        out = norm(b)
    mean, var = _with_prior(np.concatenate(batches))
    expected = (batches[-1] - mean) / np.sqrt(var + 1e-8)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    count = norm.rms.count
    far = norm(np.array([[1e6, 1e6, 1e6]]), update=False)  # evaluation: frozen statistics
    assert norm.rms.count == count and (far == 10.0).all()
    off = ObsNormalizer((3,), clip=10.0, enabled=False)
    np.testing.assert_array_equal(off(batches[0]), batches[0].astype(np.float32))
    assert off.rms.count == pytest.approx(1e-4)  # no statistics kept when disabled


def test_reward_scaler_against_plain_loop():
    rng = np.random.default_rng(2)
    T, N, gamma = 50, 3, 0.9
    rewards, dones = rng.normal(-4.0, 3.0, size=(T, N)), rng.random((T, N)) < 0.1
    scaler = RewardScaler(N, gamma, clip=10.0, enabled=True)
    out = np.stack([scaler(rewards[t], dones[t]) for t in range(T)])  # [T, N]
    # plain loop: per-env discounted return, reset after a done; variance over every return seen so far
    g, seen, expected = np.zeros(N), [], np.zeros((T, N))
    for t in range(T):
        for n in range(N):
            g[n] = gamma * g[n] + rewards[t, n]
        seen.extend(g.tolist())
        expected[t] = rewards[t] / np.sqrt(_with_prior(np.array(seen)[:, None])[1][0] + 1e-8)
        g[dones[t]] = 0.0
    np.testing.assert_allclose(out, np.clip(expected, -10, 10), rtol=1e-6)
    assert np.abs(out).max() <= 10.0


def test_normalizer_state_round_trip_through_a_checkpoint(tmp_path):
    rng = np.random.default_rng(3)
    obs_norm, rew = ObsNormalizer((3,), 10.0, True), RewardScaler(2, 0.99, 10.0, True)
    for b in _batches(rng, [2, 2, 2], 3):
        obs_norm(b)
        rew(b[:, 0], np.array([False, True]))
    probe = rng.normal(size=(4, 3))
    at_save = obs_norm(probe, update=False)
    rew_var, rew_count = rew.rms.var, rew.rms.count
    torch.save({"norm_obs": obs_norm.state_dict(), "norm_reward": rew.state_dict()}, tmp_path / "state.pt")
    obs_norm(np.full((2, 3), 1e3))  # later updates must not leak into the saved state
    rew(np.array([1e3, 1e3]), np.array([False, False]))

    saved = torch.load(tmp_path / "state.pt", weights_only=False)
    assert saved["norm_obs"]["enabled"] and saved["norm_obs"]["rms"]["count"] == pytest.approx(6 + 1e-4)
    obs2, rew2 = ObsNormalizer((3,), 10.0, True), RewardScaler(2, 0.99, 10.0, True)
    obs2.load_state_dict(saved["norm_obs"])
    rew2.load_state_dict(saved["norm_reward"])
    np.testing.assert_array_equal(obs2(probe, update=False), at_save)
    assert not np.allclose(obs_norm(probe, update=False), at_save)  # the original moved on after the save
    assert rew2.rms.var == rew_var and rew2.rms.count == rew_count == pytest.approx(6 + 1e-4)
