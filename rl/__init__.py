"""Orchard core: config, CLI, controller glue, run directory, checkpoints, logging, model zoo, benchmarks."""
__version__ = "0.1.0"
