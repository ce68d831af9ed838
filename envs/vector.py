"""One vector-env layer: gymnasium-style batched `reset/step` over EnvPool (C++ threads), gymnax (JAX) or gymnasium.

`make_vec_env(name, num_envs, seed)` returns an object with `num_envs`, `single_observation_space`,
`single_action_space`, `reset(seed=None) -> (obs [N, ...], info)`, `step(actions [N, ...]) -> (obs, reward [N],
terminated [N], truncated [N], info)` and `close()`. Both backends auto-reset an env on the step *after* it
ended (gymnasium's NEXT_STEP mode, EnvPool's native behaviour): that step ignores the action, returns the new
episode's first observation, reward 0 and no done flags. The EnvPool hot path is EnvPool's own bound method.
The gymnax backend (`gymnax/<task>`) runs one jitted, vmapped step per call and converts to numpy; for JAX
trainers that keep everything on device, use the gymnax env itself (`GymnaxVec.env`, `.params`).

Discrete envs (CartPole, ...) take integer actions [N]; continuous ones (Pendulum, MuJoCo) take float actions
[N, act_dim] inside `single_action_space.low/high` (`action_bounds(env)`). EnvPool's MuJoCo envs return float64
observations; trainers cast to float32 themselves.
"""
from __future__ import annotations

import numpy as np

from rl.errors import ConfigError
from rl.registry import Registry, did_you_mean

ENVS: Registry = Registry("vector env")


class EnvPoolVec:
    def __init__(self, task: str, num_envs: int, seed: int):
        import envpool

        self.env = envpool.make(task, env_type="gymnasium", num_envs=num_envs, seed=seed)
        self.num_envs = num_envs
        self.single_observation_space = self.env.observation_space
        self.single_action_space = self.env.action_space
        self.step = self.env.step  # no wrapper frame on the hot path

    def reset(self, seed: int | None = None):
        return self.env.reset()

    def close(self) -> None:
        self.env.close()


class GymnasiumVec:
    def __init__(self, task: str, num_envs: int, seed: int):
        import gymnasium as gym

        self.env = gym.vector.SyncVectorEnv([lambda: gym.make(task) for _ in range(num_envs)],
                                            autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
        self.num_envs, self._seed = num_envs, seed
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.step = self.env.step

    def reset(self, seed: int | None = None):
        return self.env.reset(seed=self._seed if seed is None else seed)

    def close(self) -> None:
        self.env.close()


class GymnaxVec:
    """gymnax env, vmapped over `num_envs` and jitted, behind the same NEXT_STEP auto-reset contract: an env that
    ended is reset on its next step (gymnax's own step would reset in the same step). Truncation is reaching the
    episode's step limit (`params.max_steps_in_episode`), termination any other done."""

    def __init__(self, task: str, num_envs: int, seed: int):
        import gymnasium as gym
        import gymnax
        import jax
        import jax.numpy as jnp

        from rl._xla import configure_jax

        configure_jax()
        self.env, self.params = gymnax.make(task)
        self.num_envs, self._seed = num_envs, seed
        self.single_observation_space = _to_gymnasium_space(self.env.observation_space(self.params), gym)
        self.single_action_space = _to_gymnasium_space(self.env.action_space(self.params), gym)
        env, params, limit = self.env, self.params, self.params.max_steps_in_episode

        def step_one(key, state, action, needs_reset):
            k_step, k_reset = jax.random.split(key)
            obs, new_state, reward, done, _ = env.step_env(k_step, state, action, params)
            r_obs, r_state = env.reset_env(k_reset, params)
            truncated = new_state.time >= limit  # some gymnax envs (MountainCar) do not check the limit themselves
            # an env that ended on the previous step returns its reset instead: new obs/state, reward 0, no done
            return jax.tree.map(lambda r, s: jnp.where(needs_reset, r, s), (r_obs, r_state, 0.0, False, False),
                                (obs, new_state, reward, done & ~truncated, truncated))

        def step(key, state, actions, needs_reset):
            keys = jax.random.split(key, num_envs + 1)
            obs, state, rew, term, trunc = jax.vmap(step_one)(keys[1:], state, actions, needs_reset)
            return keys[0], obs, state, rew, term, trunc

        def reset(key):
            keys = jax.random.split(key, num_envs + 1)
            obs, state = jax.vmap(lambda k: env.reset_env(k, params))(keys[1:])
            return keys[0], obs, state

        self._step, self._reset = jax.jit(step), jax.jit(reset)
        self._jax, self._state, self._key = jax, None, None
        self._needs_reset = np.zeros(num_envs, dtype=bool)

    def reset(self, seed: int | None = None):
        self._key, obs, self._state = self._reset(self._jax.random.PRNGKey(self._seed if seed is None else seed))
        self._needs_reset[:] = False
        return np.asarray(obs), {}

    def step(self, actions):
        actions = np.asarray(actions)
        if actions.dtype.kind == "f":
            actions = actions.astype(np.float32)
        self._key, obs, self._state, rew, term, trunc = self._step(self._key, self._state, actions, self._needs_reset)
        term, trunc = np.asarray(term), np.asarray(trunc)
        self._needs_reset = term | trunc
        return np.asarray(obs), np.asarray(rew, dtype=np.float64), term, trunc, {}

    def close(self) -> None:
        pass


def _to_gymnasium_space(space, gym):
    if hasattr(space, "n"):
        return gym.spaces.Discrete(int(space.n))
    shape = tuple(space.shape)
    return gym.spaces.Box(np.broadcast_to(np.asarray(space.low, np.float32), shape),
                          np.broadcast_to(np.asarray(space.high, np.float32), shape), shape, np.float32)


for _task in ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1"):
    ENVS.register(_task)(lambda n, s, _t=_task: EnvPoolVec(_t, n, s))
    ENVS.register(f"gymnasium/{_task}")(lambda n, s, _t=_task: GymnasiumVec(_t, n, s))
    ENVS.register(f"gymnax/{_task}")(lambda n, s, _t=_task: GymnaxVec(_t, n, s))
# MuJoCo (continuous actions) from the EnvPool wheel; gymnasium 1.3 only ships their v5 versions.
for _task in ("InvertedPendulum-v4", "InvertedDoublePendulum-v4", "Hopper-v4", "HalfCheetah-v4", "Walker2d-v4"):
    ENVS.register(_task)(lambda n, s, _t=_task: EnvPoolVec(_t, n, s))
ENVS.register("gymnasium/InvertedPendulum-v5")(lambda n, s: GymnasiumVec("InvertedPendulum-v5", n, s))


def action_bounds(env) -> tuple[np.ndarray, np.ndarray]:
    """(low [act_dim], high [act_dim]) as float32 of a continuous-action env; ConfigError for discrete ones."""
    space = env.single_action_space
    if not hasattr(space, "low"):
        raise ConfigError(f"env.name: this job needs continuous (Box) actions, got {space}")
    return np.asarray(space.low, dtype=np.float32).reshape(-1), np.asarray(space.high, dtype=np.float32).reshape(-1)


def make_vec_env(name: str, num_envs: int, seed: int):
    if name not in ENVS:
        raise ConfigError(f"env.name: unknown env '{name}'{did_you_mean(name, ENVS.names())}; "
                          f"registered: {', '.join(ENVS.names())}")
    return ENVS.get(name)(num_envs, seed)


class EpisodeStats:
    """Running episodic return/length per env, from the (reward, terminated, truncated) stream."""

    def __init__(self, num_envs: int):
        self.ret = np.zeros(num_envs)
        self.len = np.zeros(num_envs, dtype=np.int64)
        self.finished: list[tuple[float, int]] = []

    def update(self, reward, terminated, truncated) -> None:
        self.ret += reward
        self.len += 1
        done = np.logical_or(terminated, truncated)
        for i in np.nonzero(done)[0]:
            self.finished.append((float(self.ret[i]), int(self.len[i])))
        # the auto-reset step that follows a done adds reward 0; start counting from the next real step
        self.ret[done] = 0.0
        self.len[done] = -1

    def pop(self) -> list[tuple[float, int]]:
        out, self.finished = self.finished, []
        return out
