"""Every registered multi-agent env against the `MarlEnv` contract, and the unknown-name error."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.marl import MARL_ENVS, MarlEnv, make_marl_env

pytestmark = pytest.mark.jax  # each test in a child process watched for XLA deadlocks (tests/conftest.py)

NUM_ENVS = 4


@pytest.mark.parametrize("name", MARL_ENVS.names())
def test_env_contract(name):
    env = make_marl_env(name)
    assert isinstance(env, MarlEnv) and env.name == name
    A, D, K, L = env.num_agents, env.obs_dim, env.num_actions, env.max_episode_steps
    assert A >= 2 and D >= 1 and K >= 2 and L >= 1

    # dict API: one entry per agent, flat float32 observations
    obs, state = env.reset(jax.random.PRNGKey(0))
    assert set(obs) == set(env.agents)
    assert all(o.shape == (D,) and o.dtype == jnp.float32 for o in obs.values())
    _, _, rewards, dones, infos = env.step(jax.random.PRNGKey(1), state, {a: jnp.int32(0) for a in env.agents})
    assert set(rewards) == set(env.agents) and set(dones) == {*env.agents, "__all__"}
    assert {"returned_episode_returns", "returned_episode_lengths", "returned_episode"} <= set(infos)

    # stacked API under jit + vmap (envs) + scan (time) with random actions, for 2 full episodes and a bit more
    T = 2 * L + 3
    reset = jax.jit(jax.vmap(env.reset_stacked))
    obs, state = reset(jax.random.split(jax.random.PRNGKey(2), NUM_ENVS))
    assert obs.shape == (NUM_ENVS, A, D) and obs.dtype == jnp.float32

    def step(carry, key):
        state, ret = carry
        k_act, k_env = jax.random.split(key)
        actions = jax.random.randint(k_act, (NUM_ENVS, A), 0, K)  # [E, A]
        obs, state, reward, done, info = jax.vmap(env.step_stacked)(jax.random.split(k_env, NUM_ENVS), state, actions)
        ret = ret + reward  # [E, A] return of the running episode, kept here independently of the env's logging
        out = (obs, reward, done, info, ret)
        return (state, jnp.where(done, 0.0, ret)), out

    @jax.jit
    def rollout(state):
        return jax.lax.scan(step, (state, jnp.zeros((NUM_ENVS, A))), jax.random.split(jax.random.PRNGKey(3), T))

    _, (obs, reward, done, info, ret) = rollout(state)
    assert obs.shape == (T, NUM_ENVS, A, D) and obs.dtype == jnp.float32
    assert reward.shape == (T, NUM_ENVS, A) and reward.dtype == jnp.float32
    assert done.shape == (T, NUM_ENVS, A) and done.dtype == jnp.bool_
    assert bool(jnp.isfinite(obs).all()) and bool(jnp.isfinite(reward).all())
    done, ended = np.asarray(done), np.asarray(info["returned_episode"])
    np.testing.assert_array_equal(ended, done)  # every env here ends all agents' episodes together
    # auto-reset: every env finishes at least 2 episodes within 2 * max_episode_steps + 3 steps
    assert (done[:, :, 0].sum(0) >= 2).all(), done[:, :, 0].sum(0)
    # episode-return info: on the step an episode ends, it reports exactly the rewards summed since the last end
    ep_ret = np.asarray(info["returned_episode_returns"])
    np.testing.assert_allclose(ep_ret[done], np.asarray(ret)[done], rtol=1e-5, atol=1e-5)
    # episode lengths: positive, at most max_episode_steps, and equal to the steps since the previous end
    ep_len = np.asarray(info["returned_episode_lengths"])[:, :, 0]  # [T, E]
    for e in range(NUM_ENVS):
        ends = np.flatnonzero(done[:, e, 0])
        np.testing.assert_array_equal(ep_len[ends, e], np.diff(np.concatenate([[-1], ends])))
        assert (ep_len[ends, e] <= L).all()

    # world state for a centralised critic: every observation plus the asking agent's one-hot id
    ws = env.world_state(obs[0, 0])  # [A, A*D + A]
    assert ws.shape == (A, env.world_state_dim)
    np.testing.assert_array_equal(ws[:, : A * D], np.broadcast_to(np.asarray(obs[0, 0]).reshape(-1), (A, A * D)))
    np.testing.assert_array_equal(ws[:, A * D:], np.eye(A))


def test_mpe_episodes_last_25_steps_like_mpe2():
    env = make_marl_env("mpe_simple_spread")  # mpe2 / PettingZoo: max_cycles=25
    assert env.max_episode_steps == 25
    obs, state = env.reset_stacked(jax.random.PRNGKey(0))
    ends = []
    for t in range(60):
        obs, state, _, done, info = env.step_stacked(jax.random.PRNGKey(t), state, jnp.zeros(3, jnp.int32))
        if bool(done.all()):
            ends.append((t, int(info["returned_episode_lengths"][0])))
    assert ends == [(24, 25), (49, 25)]


def test_jaxmarl_ids_are_aliases():
    env = make_marl_env("MPE_simple_spread_v3")
    assert env.name == "mpe_simple_spread" and env.num_agents == 3


def test_unknown_env_names_it_and_suggests():
    with pytest.raises(KeyError, match=r"unknown multi-agent env 'mpe_simple_sprad' \(did you mean 'mpe_simple_spread'\?\); known: "):
        make_marl_env("mpe_simple_sprad")
