"""JAX/XLA:CPU settings that keep our JAX jobs from crashing or hanging (the `rl`, `envs` and
`trainers` packages import this, which applies the XLA flag; `envs.marl`, `trainers.marl` and the gymnax vector
env call `configure_jax`).

1. Asynchronous dispatch on CPU is switched off (`configure_jax`, called on import of `envs.marl` and
   `trainers.marl`, before they run any JAX code). A jitted call sometimes never returns: the main thread waits
   in XLA's executable (`BlockUntilReady`) while every XLA thread is idle, a lost wake-up inside XLA:CPU.
   Measured on a ~10 s IPPO training call (2-core machine, 45-60 s timeouts): with jaxlib's defaults 3 of 10
   runs hung (jaxlib 0.10.1: 1 of 6, so the older release has it too); with `--xla_cpu_multi_thread_eigen=false`
   2 of 6; with the XNNPACK/YNNPACK fusions off 1 of 6; with async dispatch off 1 of 21 (and once more in a full
   test run). Off is the best we found, not a fix: the JAX benchmarks and tests therefore run in child processes
   that rl/watchdog.py reruns when they stall. Our jobs jit large calls, so inline dispatch costs nothing visible.
2. jaxlib 0.10.2's YNNPACK fusions segfault on some rank-7 reductions (jax-ml/jax#39257, fixed upstream after
   0.10.2): `--xla_cpu_experimental_ynn_fusion_type=` is appended to XLA_FLAGS unless the user set that flag.

Both only take effect if JAX's CPU backend has not started yet in this process (importing any Orchard package
sets the flag, so it is in time unless JAX already ran).
"""
import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def disable_ynn_fusion() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=".strip()


def configure_jax() -> None:
    """Call before the first JAX computation of the process (importing jax is not enough to start the backend)."""
    import jax

    if os.environ.get("ORCHARD_JAX_ASYNC_DISPATCH", "0") != "1":  # escape hatch, for comparing
        jax.config.update("jax_cpu_enable_async_dispatch", False)


disable_ynn_fusion()
