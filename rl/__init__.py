"""Orchard core: config, CLI, controller glue, run directory, checkpoints, logging, model zoo, benchmarks."""
from rl import _xla  # noqa: F401  (XLA:CPU flags must be set before JAX starts its backend)

__version__ = "0.1.0"
