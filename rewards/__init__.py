"""Rewards: the registry of built-ins, loading user functions (`file.py:fn`, `pkg.mod:fn`), the checked runner.

The trainer builds a `RewardSet` from `RewardSpec`s (the entries of a job config's `reward` list) and calls it on
each batch; `RewardOutput` carries the summed rewards, a validity mask, per-function values and metrics.
"""
from rewards.builtin import REWARDS
from rewards import code as _code  # noqa: F401  registers python_expression and code_tests (sandboxed)
from rewards.loader import load_reward_fn
from rewards.runner import RewardOutput, RewardSet, RewardSpec

__all__ = ["REWARDS", "load_reward_fn", "RewardOutput", "RewardSet", "RewardSpec"]
