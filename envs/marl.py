"""Multi-agent JAX environments (JaxMARL) behind one functional API, registered by short name.

`make_marl_env(name, **overrides)` returns a `MarlEnv`: a JaxMARL env plus episode-return logging, with two
equivalent views of the same step:

- the per-agent dict API of JaxMARL: `reset(key) -> (obs, state)`, `step(key, state, actions) -> (obs, state,
  rewards, dones, infos)`, every value a dict keyed by agent name (`dones["__all__"]` ends the episode, and the
  step that ends it auto-resets: it returns the *new* episode's first observation, as JaxMARL does);
- a stacked-array API for trainers: `reset_stacked(key) -> (obs [A, D], state)` and `step_stacked(key, state,
  actions [A]) -> (obs [A, D], state, reward [A], done [A], info)`, agents in `env.agents` order.

Both are pure and jittable, so `jax.vmap` over envs and seeds and `lax.scan` over time work as usual.
Observations are float32 vectors of `obs_dim`; actions are discrete in `range(num_actions)` (every registered
env has the same observation size and action count for all agents, so one parameter-shared actor fits all).
`world_state(obs [A, D]) -> [A, A*D + A]` is the input of a centralised critic: every agent's observation
concatenated, plus the one-hot id of the agent whose value is asked for.

`info` of a step holds `returned_episode_returns` [A] (the undiscounted return of each agent's most recently
finished episode), `returned_episode_lengths` [A] and `returned_episode` [A] (True on the step an episode ends).

Registered envs (`MARL_ENVS`), all cheap on CPU:
| name | agents | obs | actions | episode | notes |
|---|---|---|---|---|---|
| mpe_simple_spread | 3 | 18 | 5 | 25 steps | cooperative navigation (JaxMARL `MPE_simple_spread_v3`) |
| mpe_simple_reference | 2 | 21 | 50 | 25 steps | each agent must tell the other its goal (move x say) |
| coin_game | 2 | 36 | 5 | 100 steps | 3x3 grid, 10 games of 10 steps; **shared reward** (see below) |
| switch_riddle | 3 | 2 | 3 | <= 6 steps | the 100-prisoners light-switch riddle |

MPE episodes are 25 steps here, as in the mpe2/PettingZoo reference (`max_cycles=25`); JaxMARL's own default
(`max_steps=25`) ends them after 26. The coin game is registered in its cooperative form (`shared_rewards=True`:
both agents get the sum of both rewards); with selfish rewards, greedy and random play both give a mean return
near 0, so it would not show learning. Pass `shared_rewards=False` to get the social dilemma back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from rl._xla import configure_jax
from rl.registry import Registry

configure_jax()  # before any JAX computation: CPU async dispatch off (it deadlocked our training calls)

MARL_ENVS: Registry[Callable[..., Any]] = Registry("multi-agent env")
"""name -> factory(**overrides) -> a JaxMARL `MultiAgentEnv` (overrides are the env constructor's kwargs)."""


@MARL_ENVS.register("mpe_simple_spread")
def _simple_spread(**kw):
    from jaxmarl.environments.mpe.simple_spread import SimpleSpreadMPE

    return SimpleSpreadMPE(**{"max_steps": 24, **kw})


@MARL_ENVS.register("mpe_simple_reference")
def _simple_reference(**kw):
    from jaxmarl.environments.mpe.simple_reference import SimpleReferenceMPE

    return SimpleReferenceMPE(**{"max_steps": 24, **kw})


@MARL_ENVS.register("coin_game")
def _coin_game(**kw):
    from jaxmarl.environments.coin_game.coin_game import CoinGame

    return CoinGame(**{"num_inner_steps": 10, "num_outer_steps": 10, "shared_rewards": True, **kw})


@MARL_ENVS.register("switch_riddle")
def _switch_riddle(**kw):
    from jaxmarl.environments.switch_riddle.switch_riddle import SwitchRiddle

    return SwitchRiddle(**{"num_agents": 3, **kw})


# JaxMARL's own ids (what `jaxmarl.make` takes) name the same envs; coin_game and switch_riddle are spelt alike.
JAXMARL_IDS = {"MPE_simple_spread_v3": "mpe_simple_spread", "MPE_simple_reference_v3": "mpe_simple_reference"}


def canonical_marl_env(name: str) -> str:
    """Our registered name for `name` (a JaxMARL id is accepted as an alias); unknown names raise KeyError with a
    did-you-mean and the list of known names."""
    name = JAXMARL_IDS.get(name, name)
    MARL_ENVS.get(name)
    return name


def _max_episode_steps(env) -> int:
    """Longest episode of a JaxMARL env (used to size evaluation rollouts)."""
    if hasattr(env, "num_inner_steps"):  # coin game: outer x inner games
        return int(env.num_inner_steps * env.num_outer_steps)
    if type(env).__name__ == "SwitchRiddle":
        return int(env.max_steps)
    return int(env.max_steps) + 1  # MPE: done when the pre-step counter reaches max_steps


@struct.dataclass
class MarlState:
    """A JaxMARL env state plus the episode bookkeeping of `MarlEnv`."""

    env_state: Any
    episode_returns: jax.Array  # [A] rewards summed over the running episode
    episode_lengths: jax.Array  # [] int32 steps in the running episode
    returned_episode_returns: jax.Array  # [A] return of the last finished episode
    returned_episode_lengths: jax.Array  # [] int32 length of the last finished episode


@dataclass(frozen=True, eq=False)
class MarlEnv:
    """A registered JaxMARL env with episode logging, a stacked-array view and a world state (see module doc)."""

    name: str
    env: Any = field(repr=False)
    """The raw JaxMARL `MultiAgentEnv`."""

    @property
    def agents(self) -> list[str]:
        return list(self.env.agents)

    @property
    def num_agents(self) -> int:
        return len(self.env.agents)

    @property
    def obs_dim(self) -> int:
        return int(self.env.observation_space(self.env.agents[0]).shape[0])

    @property
    def num_actions(self) -> int:
        return int(self.env.action_space(self.env.agents[0]).n)

    @property
    def world_state_dim(self) -> int:
        return self.num_agents * self.obs_dim + self.num_agents

    @property
    def max_episode_steps(self) -> int:
        return _max_episode_steps(self.env)

    # --- per-agent dict API --------------------------------------------------------------------------------------
    def _obs_dict(self, obs: dict) -> dict:
        return {a: jnp.asarray(obs[a], jnp.float32).reshape(-1) for a in self.env.agents}

    @partial(jax.jit, static_argnums=0)
    def reset(self, key: jax.Array) -> tuple[dict, MarlState]:
        obs, env_state = self.env.reset(key)
        a = self.num_agents
        state = MarlState(env_state, jnp.zeros(a, jnp.float32), jnp.zeros((), jnp.int32),
                          jnp.zeros(a, jnp.float32), jnp.zeros((), jnp.int32))
        return self._obs_dict(obs), state

    @partial(jax.jit, static_argnums=0)
    def step(self, key: jax.Array, state: MarlState, actions: dict) -> tuple[dict, MarlState, dict, dict, dict]:
        obs, env_state, rewards, dones, _ = self.env.step(key, state.env_state, actions)
        rewards = {a: jnp.asarray(rewards[a], jnp.float32) for a in self.env.agents}
        dones = {a: jnp.asarray(dones[a], bool) for a in [*self.env.agents, "__all__"]}
        ended = dones["__all__"]
        ep_return = state.episode_returns + jnp.stack([rewards[a] for a in self.env.agents])  # [A]
        ep_length = state.episode_lengths + 1
        state = MarlState(
            env_state=env_state,
            episode_returns=jnp.where(ended, 0.0, ep_return),
            episode_lengths=jnp.where(ended, 0, ep_length),
            returned_episode_returns=jnp.where(ended, ep_return, state.returned_episode_returns),
            returned_episode_lengths=jnp.where(ended, ep_length, state.returned_episode_lengths),
        )
        infos = {"returned_episode_returns": state.returned_episode_returns,
                 "returned_episode_lengths": jnp.full(self.num_agents, state.returned_episode_lengths),
                 "returned_episode": jnp.full(self.num_agents, ended)}
        return self._obs_dict(obs), state, rewards, dones, infos

    # --- stacked-array API (what the trainers use) ---------------------------------------------------------------
    def stack(self, per_agent: dict) -> jax.Array:
        return jnp.stack([per_agent[a] for a in self.env.agents])

    def reset_stacked(self, key: jax.Array) -> tuple[jax.Array, MarlState]:
        obs, state = self.reset(key)
        return self.stack(obs), state  # [A, D]

    def step_stacked(self, key: jax.Array, state: MarlState, actions: jax.Array):
        """actions [A] int -> obs [A, D], state, reward [A], done [A] (episode ended), info."""
        acts = {a: actions[i] for i, a in enumerate(self.env.agents)}
        obs, state, rewards, dones, info = self.step(key, state, acts)
        done = jnp.stack([dones[a] for a in self.env.agents]) | dones["__all__"]  # [A]
        return self.stack(obs), state, self.stack(rewards), done, info

    def world_state(self, obs: jax.Array) -> jax.Array:
        """obs [A, D] -> centralised-critic input [A, A*D + A] (all observations + the asking agent's one-hot id)."""
        a = self.num_agents
        flat = jnp.broadcast_to(obs.reshape(-1), (a, obs.size))  # [A, A*D]
        return jnp.concatenate([flat, jnp.eye(a, dtype=obs.dtype)], axis=-1)


def make_marl_env(name: str, **overrides) -> MarlEnv:
    """Build a registered env (or a JaxMARL id of one); unknown names raise KeyError with a did-you-mean and the
    list of known names."""
    name = canonical_marl_env(name)
    env = MARL_ENVS.get(name)(**overrides)
    agents = env.agents
    spaces = {(tuple(env.observation_space(a).shape), int(env.action_space(a).n)) for a in agents}
    if len(spaces) != 1:
        raise ValueError(f"{name}: agents differ in observation shape or action count ({sorted(spaces)}); "
                         f"a parameter-shared actor needs them equal")
    return MarlEnv(name, env)
