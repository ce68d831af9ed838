"""Rewards: the registry of built-ins, loading user functions (`file.py:fn`, `pkg.mod:fn`), the checked runner."""
from rewards.builtin import REWARDS
from rewards.loader import load_reward_fn
from rewards.runner import RewardOutput, RewardSet, RewardSpec

__all__ = ["REWARDS", "load_reward_fn", "RewardOutput", "RewardSet", "RewardSpec"]
