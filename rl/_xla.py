"""JAX/XLA:CPU settings that keep our JAX jobs from crashing or hanging (imported by `rl`, `envs` and `trainers`).

1. Asynchronous dispatch on CPU is switched off (`configure_jax`, called by the modules that run JAX code before
   they run any). With it on, our jitted IPPO/MAPPO training call deadlocked on the 2-core dev machine in about a
   third of the runs: the main thread waits forever in `block_until_ready` while every XLA thread is idle (a
   lost wake-up; it hung CI's `rl bench marl` test). Measured on a 10 s training call, 60 s timeout: 9 of 22
   runs hung with jaxlib 0.10.2's defaults (1 of 6 with jaxlib 0.10.1, so the older release has it too, and 1 of
   6 with the XNNPACK/YNNPACK fusions off), 0 of 16 with async dispatch off. Our jobs jit large calls (many PPO
   updates per call), so dispatching inline costs nothing measurable.
2. jaxlib 0.10.2's YNNPACK fusions segfault on some rank-7 reductions (jax-ml/jax#39257, fixed upstream after
   0.10.2): `--xla_cpu_experimental_ynn_fusion_type=` is appended to XLA_FLAGS unless the user set that flag.

Both only take effect if JAX's CPU backend has not started yet in this process.
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
