"""JAX settings of rl/_xla.py: importing our packages switches off jaxlib 0.10.2's YNNPACK fusions, which segfault
XLA:CPU (jax-ml/jax#39257), and our JAX envs switch off CPU async dispatch, which deadlocked `rl bench marl`. The program below segfaults on jaxlib 0.10.2 without the flag."""
import os
import subprocess
import sys

import pytest

PROGRAM = """
import envs  # our package: must set XLA_FLAGS before JAX starts its CPU backend
import jax, jax.numpy as jnp
S = (3, 1, 2, 2, 8, 8, 8)
u = jax.random.normal(jax.random.PRNGKey(0), S, dtype=jnp.float32)
v = jax.random.normal(jax.random.PRNGKey(1), S, dtype=jnp.float32)
print(jax.jit(lambda a, b: jnp.sum(a * b, axis=3))(u, v).shape)
"""


def test_importing_envs_avoids_the_ynn_fusion_crash():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "(3, 1, 2, 8, 8, 8)"


def test_a_user_setting_of_the_flag_is_kept():
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=foo"}
    out = subprocess.run([sys.executable, "-c", "import rl, os; print(os.environ['XLA_FLAGS'])"], capture_output=True,
                         text=True, env=env, timeout=120, check=True).stdout
    assert out.strip() == "--xla_cpu_experimental_ynn_fusion_type=foo"


def test_marl_envs_turn_off_cpu_async_dispatch():
    program = "import envs.marl, jax; print(jax.config.read('jax_cpu_enable_async_dispatch'))"
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.jax  # in a watched child (tests/conftest.py): a deadlocked call fails the test as a stall, no timer here
def test_concurrent_batched_lapack_calls_do_not_deadlock():
    # jaxlib 0.10.0-0.10.2 deadlock XLA:CPU's intra-op pool when independent batched LAPACK kernels (here QR, as in
    # flax's orthogonal init vmapped over seeds) run at once on every pool thread. With jaxlib 0.10.2 on 2 CPUs this
    # program did not get through its 20 calls in any of 4 tries (3 reproducer runs: a call over 20 s against
    # milliseconds; one run of this test killed after 400 s, still using some CPU, so pytest's timeout rather than
    # the stall watchdog ends it there). The pinned jaxlib has no such wait (rl/_xla.py).
    import jax

    from rl.bench.xla_repro import concurrent_batched_qr

    f = concurrent_batched_qr(ops=4 * len(os.sched_getaffinity(0)), batch=8, size=128)
    for i in range(20):
        out = jax.block_until_ready(f(jax.random.PRNGKey(i)))
        assert all(bool(jax.numpy.isfinite(x)) for x in out)
