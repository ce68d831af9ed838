import rl  # noqa: F401  (sets XLA:CPU flags before any JAX env starts its backend)
