"""Multi-agent PPO in JAX, PureJaxRL style; IPPO and MAPPO differ only in the critic's input.

One PPO update reads top to bottom in `update`: rollout (`lax.scan` over num_steps, envs vmapped) -> GAE ->
update_epochs x num_minibatches of clipped PPO -> metrics. Every function is pure, so

    train = make_trainer(cfg, centralized_critic=False).train
    out = jax.jit(jax.vmap(train))(jax.vmap(jax.random.PRNGKey)(seeds))

trains many seeds at once. The actor is shared by all agents (parameter sharing) and sees only its agent's
observation. The critic (also shared) sees the same observation in IPPO (de Witt et al. 2020; JaxMARL's `ippo_ff_*`
baselines), and the world state (every agent's observation plus the agent's one-hot id, `MarlEnv.world_state`) in
MAPPO (Yu et al. 2022; JaxMARL's `mappo_*` baselines). See docs/algorithms.md section 5.

For jobs with progress and checkpoints, `init` + `segment(runner, n)` run the same updates in chunks: the
`RunnerState` pytree (params, optimizer state, env states, observations, RNG key, update counter) is all there is,
so chunking, saving and resuming give the same numbers as one `train` call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.linen.initializers import constant, orthogonal

from envs.marl import MarlEnv, make_marl_env
from trainers.marl.config import MarlConfig
from trainers.marl.loss import gae, normalize, ppo_loss


# --- networks -------------------------------------------------------------------------------------------------------
class MLP(nn.Module):
    """Two hidden layers and a linear head (orthogonal init, PureJaxRL scales)."""

    hidden: int
    out: int
    out_scale: float
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x):
        act = nn.tanh if self.activation == "tanh" else nn.relu
        for _ in range(2):
            x = act(nn.Dense(self.hidden, kernel_init=orthogonal(np.sqrt(2)), bias_init=constant(0.0))(x))
        return nn.Dense(self.out, kernel_init=orthogonal(self.out_scale), bias_init=constant(0.0))(x)


# --- state carried across updates and what a rollout records -------------------------------------------------------
@struct.dataclass
class RunnerState:
    params: Any  # {"actor": ..., "critic": ...}
    opt_state: Any
    env_state: Any  # MarlState batched over envs [E]
    obs: jax.Array  # [E, A, D]
    rng: jax.Array  # PRNG key
    update: jax.Array  # [] int32, PPO updates done


@struct.dataclass
class Transition:
    obs: jax.Array  # [T, E, A, D]
    critic_in: jax.Array  # [T, E, A, C]
    action: jax.Array  # [T, E, A]
    log_prob: jax.Array  # [T, E, A]
    value: jax.Array  # [T, E, A]
    reward: jax.Array  # [T, E, A]
    done: jax.Array  # [T, E, A] episode ended at this step
    episode_return: jax.Array  # [T, E, A] return of the episode that ended at this step (if any)


def _num_updates(cfg: MarlConfig) -> int:
    return max(1, cfg.total_timesteps // (cfg.num_steps * cfg.env.num_envs))


@dataclass(frozen=True, eq=False)
class MarlTrainer:
    cfg: MarlConfig
    env: MarlEnv
    centralized_critic: bool

    # --- sizes ----------------------------------------------------------------------------------------------------
    @property
    def num_updates(self) -> int:
        return _num_updates(self.cfg)

    @property
    def env_steps_per_update(self) -> int:
        return self.cfg.num_steps * self.cfg.env.num_envs

    @property
    def actor(self) -> MLP:
        return MLP(self.cfg.hidden, self.env.num_actions, 0.01, self.cfg.activation)

    @property
    def critic(self) -> MLP:
        return MLP(self.cfg.hidden, 1, 1.0, self.cfg.activation)

    @property
    def optimizer(self) -> optax.GradientTransformation:
        cfg = self.cfg
        steps_per_update = cfg.update_epochs * cfg.num_minibatches

        def schedule(count):  # linear to 0 over training, constant per update
            return cfg.lr * (1.0 - (count // steps_per_update) / self.num_updates)

        lr = schedule if cfg.anneal_lr else cfg.lr
        return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr, eps=1e-5))

    def critic_input(self, obs: jax.Array) -> jax.Array:
        """obs [..., A, D] -> [..., A, D] (IPPO) or [..., A, A*D + A] world state (MAPPO)."""
        if not self.centralized_critic:
            return obs
        flat = self.env.world_state
        for _ in range(obs.ndim - 2):
            flat = jax.vmap(flat)
        return flat(obs)

    def policy(self, params, obs: jax.Array) -> jax.Array:
        return self.actor.apply(params["actor"], obs)  # [..., K] logits

    def value(self, params, critic_in: jax.Array) -> jax.Array:
        return self.critic.apply(params["critic"], critic_in)[..., 0]  # [...]

    # --- init -----------------------------------------------------------------------------------------------------
    def init(self, rng: jax.Array) -> RunnerState:
        rng, k_actor, k_critic, k_env = jax.random.split(rng, 4)
        obs, env_state = jax.vmap(self.env.reset_stacked)(jax.random.split(k_env, self.cfg.env.num_envs))  # [E, A, D]
        params = {"actor": self.actor.init(k_actor, obs[0, 0]),
                  "critic": self.critic.init(k_critic, self.critic_input(obs)[0, 0])}
        return RunnerState(params, self.optimizer.init(params), env_state, obs, rng, jnp.zeros((), jnp.int32))

    def init_seeds(self, rngs: jax.Array) -> RunnerState:
        """[S, 2] keys -> the RunnerState of S seeds (every leaf [S, ...]); the same numbers as `jax.vmap(init)`.
        One seed at a time (`lax.map`): a vmapped init batches the orthogonal initializer's QRs, and jaxlib 0.10.x's
        batched LAPACK kernels deadlock XLA:CPU's thread pool when several run at once (rl/_xla.py)."""
        return jax.lax.map(self.init, rngs)

    # --- one PPO update -------------------------------------------------------------------------------------------
    def update(self, runner: RunnerState, _=None) -> tuple[RunnerState, dict]:
        cfg, env = self.cfg, self.env
        num_envs = cfg.env.num_envs

        # 1. rollout: num_steps env steps with the current policy
        def env_step(carry, _):
            env_state, obs, rng = carry
            rng, k_act, k_env = jax.random.split(rng, 3)
            logits = self.policy(runner.params, obs)  # [E, A, K]
            action = jax.random.categorical(k_act, logits)  # [E, A]
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], -1)[..., 0]  # [E, A]
            critic_in = self.critic_input(obs)  # [E, A, C]
            value = self.value(runner.params, critic_in)  # [E, A]
            next_obs, env_state, reward, done, info = jax.vmap(env.step_stacked)(
                jax.random.split(k_env, num_envs), env_state, action)
            t = Transition(obs, critic_in, action, log_prob, value, reward, done, info["returned_episode_returns"])
            return (env_state, next_obs, rng), t

        (env_state, last_obs, rng), traj = jax.lax.scan(
            env_step, (runner.env_state, runner.obs, runner.rng), None, cfg.num_steps)  # traj: [T, E, A, ...]

        # 2. advantages
        last_value = self.value(runner.params, self.critic_input(last_obs))  # [E, A]
        advantages, targets = gae(traj.reward, traj.value, traj.done, last_value, cfg.gamma, cfg.gae_lambda)

        # 3. update_epochs x num_minibatches of clipped PPO on the flattened batch
        batch = (traj.obs, traj.critic_in, traj.action, traj.log_prob, traj.value, advantages, targets)
        batch = jax.tree.map(lambda x: x.reshape(-1, *x.shape[3:]), batch)  # [T*E*A, ...]
        n = batch[0].shape[0]

        def loss_fn(params, mb):
            obs, critic_in, action, old_log_prob, old_value, adv, tgt = mb
            logits = self.policy(params, obs)  # [B, K]
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]  # [B]
            value = self.value(params, critic_in)  # [B]
            return ppo_loss(log_prob, old_log_prob, normalize(adv), value, old_value, tgt, logits,
                            cfg.clip_eps, cfg.vf_coef, cfg.ent_coef)

        def minibatch_step(carry, mb):
            params, opt_state = carry
            grads, metrics = jax.grad(loss_fn, has_aux=True)(params, mb)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            metrics["grad_norm"] = optax.global_norm(grads)
            return (optax.apply_updates(params, updates), opt_state), metrics

        def epoch(carry, _):
            params, opt_state, rng = carry
            rng, k_perm = jax.random.split(rng)
            perm = jax.random.permutation(k_perm, n)
            mbs = jax.tree.map(lambda x: x[perm].reshape(cfg.num_minibatches, -1, *x.shape[1:]), batch)
            (params, opt_state), metrics = jax.lax.scan(minibatch_step, (params, opt_state), mbs)
            return (params, opt_state, rng), metrics

        (params, opt_state, rng), losses = jax.lax.scan(
            epoch, (runner.params, runner.opt_state, rng), None, cfg.update_epochs)

        # 4. metrics: mean return (per agent) of the episodes that ended in this rollout
        ended = traj.done.astype(jnp.float32)  # [T, E, A]
        episodes = ended.sum()
        metrics = {f"losses/{k}": v.mean() for k, v in losses.items()}
        metrics["return"] = jnp.where(episodes > 0, (traj.episode_return * ended).sum() / jnp.maximum(episodes, 1),
                                      jnp.nan)
        metrics["episodes"] = episodes / env.num_agents
        runner = RunnerState(params, opt_state, env_state, last_obs, rng, runner.update + 1)
        return runner, metrics

    def segment(self, runner: RunnerState, n: int) -> tuple[RunnerState, dict]:
        """n updates in one `lax.scan`; metrics come back stacked [n]."""
        return jax.lax.scan(self.update, runner, None, n)

    # --- evaluation -----------------------------------------------------------------------------------------------
    def evaluate(self, params, rng: jax.Array) -> jax.Array:
        """Mean per-agent return of the first episode of `eval_envs` fresh envs under the sampled policy."""
        e = self.cfg.eval_envs
        rng, k_reset = jax.random.split(rng)
        obs, env_state = jax.vmap(self.env.reset_stacked)(jax.random.split(k_reset, e))

        def step(carry, _):
            env_state, obs, rng, alive, ret = carry  # alive [E]: first episode still running
            rng, k_act, k_env = jax.random.split(rng, 3)
            action = jax.random.categorical(k_act, self.policy(params, obs))  # [E, A]
            obs, env_state, reward, done, _ = jax.vmap(self.env.step_stacked)(jax.random.split(k_env, e), env_state,
                                                                               action)
            ret = ret + reward * alive[:, None]  # [E, A]
            return (env_state, obs, rng, alive & ~done.any(-1), ret), None

        init = (env_state, obs, rng, jnp.ones(e, bool), jnp.zeros((e, self.env.num_agents)))
        (_, _, _, _, ret), _ = jax.lax.scan(step, init, None, self.env.max_episode_steps)
        return ret.mean()

    # --- the whole run, pure ----------------------------------------------------------------------------------------
    def train(self, rng: jax.Array) -> dict:
        """rng -> {"runner": final RunnerState, "metrics": {name: [num_updates]}, "return_initial", "return_final"}."""
        k_init, k_eval = split_seed_key(rng)
        runner = self.init(k_init)
        return_initial = self.evaluate(runner.params, k_eval)
        runner, metrics = self.segment(runner, self.num_updates)
        return {"runner": runner, "metrics": metrics, "return_initial": return_initial,
                "return_final": self.evaluate(runner.params, k_eval)}


def split_seed_key(rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A seed's key -> (key for init and training, key for evaluation). Initial and final evaluations share the
    evaluation key: same start states and sampling noise, so the two returns differ only by the policy."""
    k_init, k_eval = jax.random.split(rng)
    return k_init, k_eval


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """Keys of seeds seed, ..., seed+num_seeds-1 ([S, 2]): seed i of a vmapped job equals a job run with seed+i."""
    return jnp.stack([jax.random.PRNGKey(seed + i) for i in range(num_seeds)])


def make_trainer(cfg: MarlConfig, centralized_critic: bool | None = None) -> MarlTrainer:
    """Build the trainer for cfg (critic from cfg.algo unless given); checks the batch splits into minibatches."""
    env = make_marl_env(cfg.env.name, **cfg.env.kwargs)
    samples = cfg.num_steps * cfg.env.num_envs * env.num_agents
    if samples % cfg.num_minibatches:
        raise ValueError(f"num_minibatches={cfg.num_minibatches} must divide num_steps x num_envs x agents = "
                         f"{cfg.num_steps} x {cfg.env.num_envs} x {env.num_agents} = {samples}")
    if centralized_critic is None:
        centralized_critic = cfg.algo == "mappo"
    return MarlTrainer(cfg, env, centralized_critic)
