"""Contract test over every registered vector env: spaces, shapes, dtypes, auto-reset, seeded determinism."""
import numpy as np
import pytest

from envs.vector import ENVS, EpisodeStats, action_bounds, make_vec_env
from rl.errors import ConfigError


# gymnax envs run jitted JAX: in a child process watched for XLA stalls (tests/conftest.py)
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.jax) if n.startswith("gymnax/") else n
                                  for n in ENVS.names()])
def test_vector_env_contract(name):
    n = 3
    env = make_vec_env(name, n, seed=1)
    obs, info = env.reset()
    assert obs.shape == (n, *env.single_observation_space.shape)
    space = env.single_action_space
    space.seed(0)
    if hasattr(space, "n"):  # discrete: integer actions [N]
        assert space.shape == ()
    else:  # continuous (Box): float actions [N, act_dim] inside finite bounds
        low, high = action_bounds(env)
        assert low.shape == high.shape == space.shape and np.all(np.isfinite(low)) and np.all(low < high)
    # 1100 steps: long enough for an episode to end even in envs truncated at 1000 steps (HalfCheetah)
    actions = [np.array([space.sample() for _ in range(n)]) for _ in range(1100)]
    assert actions[0].shape == (n, *space.shape)
    saw_done, after_done_ok, trajectory = False, True, [obs.copy()]
    prev_done = np.zeros(n, dtype=bool)
    for a in actions:
        obs, rew, term, trunc, info = env.step(a)
        assert obs.shape == (n, *env.single_observation_space.shape)
        assert rew.shape == (n,) and term.shape == (n,) and trunc.shape == (n,)
        assert term.dtype == bool and trunc.dtype == bool
        # the step after a done is the auto-reset: no reward and no done flag
        after_done_ok &= bool(np.all(rew[prev_done] == 0) and not np.any((term | trunc)[prev_done]))
        prev_done = term | trunc
        saw_done |= bool(prev_done.any())
        trajectory.append(obs.copy())
    env.close()
    assert saw_done, "no episode ended in 1100 random steps"
    assert after_done_ok
    again = make_vec_env(name, n, seed=1)
    obs2, _ = again.reset()
    assert np.allclose(obs2, trajectory[0])
    for a, expected in zip(actions[:50], trajectory[1:51]):
        obs2 = again.step(a)[0]
    assert np.allclose(obs2, trajectory[50]), "same seed and actions must give the same trajectory"
    again.close()


def test_unknown_env_suggests():
    with pytest.raises(ConfigError, match="did you mean 'CartPole-v1'"):
        make_vec_env("CartPole-v2", 2, 0)


def test_episode_stats_skips_autoreset_step():
    s = EpisodeStats(2)
    s.update(np.array([1.0, 1.0]), np.array([False, True]), np.array([False, False]))
    s.update(np.array([1.0, 0.0]), np.array([True, False]), np.array([False, False]))  # env 1 auto-resets
    s.update(np.array([1.0, 1.0]), np.array([False, False]), np.array([False, True]))
    assert s.pop() == [(1.0, 1), (2.0, 2), (1.0, 1)]


def test_action_bounds_rejects_discrete():
    env = make_vec_env("CartPole-v1", 1, 0)
    with pytest.raises(ConfigError, match="continuous"):
        action_bounds(env)
    env.close()
