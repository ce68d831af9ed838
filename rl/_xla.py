"""XLA:CPU settings applied before JAX starts its backend (imported by `rl`, `envs` and `trainers`).

jaxlib 0.10.2 (our pin) turns on XLA:CPU's YNNPACK fusions by default, and they can deadlock: the process waits
forever in `block_until_ready` with every XLA thread idle (jax-ml/jax#39257; it hung our `rl bench marl` about
one run in two on a 2-core machine, and the fix is not in a released jaxlib we can pin with JaxMARL). We switch
those fusions off through XLA_FLAGS unless the user already set the flag. It only takes effect if JAX's CPU
backend has not started yet in this process, which is why the `rl`, `envs` and `trainers` packages import this.
"""
import os

_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def disable_ynn_fusion() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}=".strip()


disable_ynn_fusion()
