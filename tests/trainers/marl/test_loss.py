"""IPPO/MAPPO loss math: hand-computed examples (working in the comments) and GAE against a plain Python loop."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainers.marl.loss import categorical_entropy, gae, normalize, ppo_actor_loss, ppo_loss, value_loss


def test_gae_hand_example():
    # T=3, one env, gamma=0.5, lambda=0.5, episode ends at t=1 (the obs after it starts a new episode).
    # deltas: t=2: 1 + 0.5*4 - 2 = 1      (bootstrap last_value=4)
    #         t=1: 0 + 0 (done) - 1 = -1
    #         t=0: 1 + 0.5*1 - 0 = 1.5
    # advs:   t=2: 1;  t=1: -1 + 0 (done) = -1;  t=0: 1.5 + 0.25*(-1) = 1.25
    r, v = jnp.array([1.0, 0.0, 1.0]), jnp.array([0.0, 1.0, 2.0])
    d = jnp.array([False, True, False])
    adv, tgt = gae(r, v, d, jnp.array(4.0), 0.5, 0.5)
    np.testing.assert_allclose(adv, [1.25, -1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(tgt, [1.25, 0.0, 3.0], rtol=1e-6)


def test_gae_matches_plain_loop():
    rng = np.random.default_rng(0)
    T, E, A, gamma, lam = 9, 4, 3, 0.9, 0.8
    r, v = rng.normal(size=(T, E, A)).astype(np.float32), rng.normal(size=(T, E, A)).astype(np.float32)
    d = rng.random((T, E, A)) < 0.3
    last_v = rng.normal(size=(E, A)).astype(np.float32)
    adv, tgt = gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(d), jnp.asarray(last_v), gamma, lam)
    expected = np.zeros_like(r)
    for e in range(E):
        for a in range(A):
            acc, next_v = 0.0, last_v[e, a]
            for t in reversed(range(T)):
                nd = 1.0 - d[t, e, a]
                acc = r[t, e, a] + gamma * next_v * nd - v[t, e, a] + gamma * lam * nd * acc
                expected[t, e, a], next_v = acc, v[t, e, a]
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tgt, expected + v, rtol=1e-5, atol=1e-5)


def test_normalize():
    # [1, 3]: mean 2, population std 1 -> [-1, 1]
    np.testing.assert_allclose(normalize(jnp.array([1.0, 3.0])), [-1.0, 1.0], rtol=1e-6)


def test_actor_loss_hand_example():
    # ratios e^0.5 = 1.6487 (A=+1: min(1.6487, 1.2) = 1.2) and e^-0.5 = 0.6065 (A=-1: min(-0.6065, -0.8) = -0.8)
    # loss = -mean(1.2, -0.8) = -0.2; both ratios are outside [0.8, 1.2] -> clipfrac 1
    loss, m = ppo_actor_loss(jnp.array([0.5, -0.5]), jnp.zeros(2), jnp.array([1.0, -1.0]), 0.2)
    assert float(loss) == pytest.approx(-0.2, rel=1e-6)
    assert float(m["clipfrac"]) == 1.0
    # approx_kl = mean((r - 1) - log r) = ((e^.5 - 1 - .5) + (e^-.5 - 1 + .5)) / 2
    assert float(m["approx_kl"]) == pytest.approx(((math.exp(0.5) - 1.5) + (math.exp(-0.5) - 0.5)) / 2, rel=1e-5)


def test_actor_loss_unclipped_is_minus_mean_advantage_at_ratio_one():
    # ratio 1 everywhere: loss = -mean(A) = -(2 - 1) / 2 = -0.5, nothing clipped, kl 0
    loss, m = ppo_actor_loss(jnp.zeros(2), jnp.zeros(2), jnp.array([2.0, -1.0]), 0.2)
    assert float(loss) == pytest.approx(-0.5)
    assert float(m["clipfrac"]) == 0.0 and float(m["approx_kl"]) == pytest.approx(0.0, abs=1e-7)


def test_value_loss_clipping():
    # v=3, old=0, R=1, eps=0.5: unclipped (3-1)^2 = 4; clipped 0 + 0.5 = 0.5 -> (0.5-1)^2 = 0.25; 0.5*max = 2
    assert float(value_loss(jnp.array([3.0]), jnp.array([0.0]), jnp.array([1.0]), 0.5)) == pytest.approx(2.0)
    # v=0.2 inside the clip range: both errors (0.2-1)^2 = 0.64 -> 0.32
    assert float(value_loss(jnp.array([0.2]), jnp.array([0.0]), jnp.array([1.0]), 0.5)) == pytest.approx(0.32)
    # v=-1 far below R=1 with old=0.9: unclipped 4; clipped 0.9-0.5 = 0.4 -> 0.36; max 4 -> 2 (clipping never helps)
    assert float(value_loss(jnp.array([-1.0]), jnp.array([0.9]), jnp.array([1.0]), 0.5)) == pytest.approx(2.0)


def test_categorical_entropy():
    # uniform over 4 actions: log 4; a one-hot (very peaked) distribution: ~0; mean of the two = log(4)/2
    logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    assert float(categorical_entropy(logits)) == pytest.approx(math.log(4) / 2, rel=1e-5)


def test_ppo_loss_combines_terms():
    # actor -0.5 (ratio 1, A = [2, -1]); value: v=[1, 1], R=[0, 2] -> 0.5*mean(1, 1) = 0.5; entropy log 2 (two
    # uniform actions). total = -0.5 + 0.5*0.5 - 0.01*log 2
    logits = jnp.zeros((2, 2))
    total, m = ppo_loss(jnp.zeros(2), jnp.zeros(2), jnp.array([2.0, -1.0]), jnp.ones(2), jnp.ones(2),
                        jnp.array([0.0, 2.0]), logits, 0.2, 0.5, 0.01)
    assert float(total) == pytest.approx(-0.5 + 0.25 - 0.01 * math.log(2), rel=1e-6)
    assert float(m["value"]) == pytest.approx(0.5) and float(m["entropy"]) == pytest.approx(math.log(2), rel=1e-6)


def test_ppo_loss_gradient_flows_only_through_new_policy_and_value():
    logits = jnp.zeros((2, 3))

    def f(lp, v):
        return ppo_loss(lp, jnp.zeros(2), jnp.array([1.0, -1.0]), v, jnp.zeros(2), jnp.ones(2), logits, 0.2, 0.5, 0.0)[0]

    g_lp, g_v = jax.grad(f, argnums=(0, 1))(jnp.zeros(2), jnp.zeros(2))
    # d(-mean(ratio*A))/d logp at ratio 1 = -A/2; d(0.5*mean((v-1)^2))/dv * 0.5 = 0.5 * (v - 1) / 2 = -0.25
    np.testing.assert_allclose(g_lp, [-0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(g_v, [-0.25, -0.25], rtol=1e-6)
