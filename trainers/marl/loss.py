"""PPO math for IPPO/MAPPO in JAX: pure functions of arrays and floats, each tested against a hand-computed example.

Shapes: `T` rollout steps, `N` anything flattened (envs x agents, or a minibatch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(rewards: jax.Array, values: jax.Array, dones: jax.Array, last_value: jax.Array,
        gamma: float, gae_lambda: float) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over a rollout, as a reverse `lax.scan`.

    rewards, values, dones: [T, ...]; `dones[t]` is True when the episode ended *at* step t (the observation after
    it belongs to a new episode, so nothing is bootstrapped across it). last_value: [...] value of the observation
    after the last step. Returns (advantages [T, ...], targets = advantages + values [T, ...]).
    """
    def step(carry, x):
        next_adv, next_value = carry
        reward, value, done = x
        not_done = 1.0 - done.astype(jnp.float32)
        delta = reward + gamma * next_value * not_done - value  # [...]
        adv = delta + gamma * gae_lambda * not_done * next_adv  # [...]
        return (adv, value), adv

    _, advantages = jax.lax.scan(step, (jnp.zeros_like(last_value), last_value), (rewards, values, dones),
                                 reverse=True)
    return advantages, advantages + values


def normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """(x - mean) / (std + eps) over all elements (advantage normalisation per minibatch)."""
    return (x - x.mean()) / (x.std() + eps)


def ppo_actor_loss(log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array,
                   clip_eps: float) -> tuple[jax.Array, dict]:
    """Clipped surrogate: mean(-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)), all inputs [N].

    Metrics: `approx_kl` = mean((ratio - 1) - log ratio) (the low-variance k3 estimator), `clipfrac` = share of
    samples with |ratio - 1| > eps.
    """
    log_ratio = log_prob - old_log_prob  # [N]
    ratio = jnp.exp(log_ratio)  # [N]
    surrogate = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -jnp.minimum(surrogate, clipped).mean()
    metrics = {"approx_kl": ((ratio - 1.0) - log_ratio).mean(),
               "clipfrac": (jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32).mean()}
    return loss, metrics


def value_loss(value: jax.Array, old_value: jax.Array, targets: jax.Array, clip_eps: float) -> jax.Array:
    """Clipped value loss (PureJaxRL/MAPPO): 0.5 * mean(max((v - R)^2, (v_old + clip(v - v_old, -eps, eps) - R)^2))."""
    clipped = old_value + jnp.clip(value - old_value, -clip_eps, clip_eps)  # [N]
    return 0.5 * jnp.maximum(jnp.square(value - targets), jnp.square(clipped - targets)).mean()


def categorical_entropy(logits: jax.Array) -> jax.Array:
    """Mean entropy of categorical distributions given by logits [N, K]: mean(-sum p log p)."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -(jnp.exp(log_p) * log_p).sum(-1).mean()


def ppo_loss(log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array, value: jax.Array,
             old_value: jax.Array, targets: jax.Array, logits: jax.Array, clip_eps: float, vf_coef: float,
             ent_coef: float) -> tuple[jax.Array, dict]:
    """total = actor + vf_coef * value - ent_coef * entropy (advantages already normalised by the caller)."""
    actor, m = ppo_actor_loss(log_prob, old_log_prob, advantages, clip_eps)
    critic = value_loss(value, old_value, targets, clip_eps)
    entropy = categorical_entropy(logits)
    total = actor + vf_coef * critic - ent_coef * entropy
    return total, {"total": total, "actor": actor, "value": critic, "entropy": entropy, **m}
