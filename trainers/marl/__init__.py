"""IPPO and MAPPO in JAX (PureJaxRL style) on JaxMARL envs."""
from rl._xla import configure_jax

configure_jax()  # before any JAX computation: CPU async dispatch off (it deadlocked our training calls)
