"""Advantage estimators, registered by name, and GAE. Pure functions, vectorised with index_add / scatter_reduce.

Outcome estimators for group-sampled LLM RL share one signature (`ADVANTAGES`):

    fn(rewards [B] float, group_ids [B] long, valid [B] bool | None = None, eps: float = 1e-6) -> advantages [B]

- `group_ids` say which prompt each sample came from; they need not be contiguous or sorted (any ids >= 0).
- Invalid (dropped) samples get advantage 0 and are left out of every group statistic, so their reward may be NaN.
- A group with fewer than 2 valid samples has no baseline to compare with: advantage 0 for grpo, dr_grpo and rloo.
- `eps` is only used by `grpo`; the others accept it so every estimator has the same signature.

Checked against a plain Python loop on random inputs (tests/trainers/test_advantages.py). `gae` is the
classic-RL estimator used by trainers/ppo; it is not registered (different signature).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rl.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")


@dataclass(frozen=True)
class GroupStats:
    """Statistics of each sample's group over its valid samples, broadcast back to samples (all [B])."""

    mean: torch.Tensor  # [B] group mean reward (0 for a group with no valid sample)
    std: torch.Tensor  # [B] group std, unbiased (n - 1), as torch.std; 0 for a group with < 2 valid samples
    count: torch.Tensor  # [B] number of valid samples in the group


def _check(rewards: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Validate the shared contract; returns `valid` with None filled in as all-True."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [B], got shape {tuple(rewards.shape)}")
    if group_ids.shape != rewards.shape:
        raise ValueError(f"group_ids shape {tuple(group_ids.shape)} != rewards shape {tuple(rewards.shape)}")
    if group_ids.dtype != torch.long:
        raise TypeError(f"group_ids must be torch.long, got {group_ids.dtype}")
    if group_ids.numel() and int(group_ids.min()) < 0:
        raise ValueError(f"group_ids must be >= 0, got min {int(group_ids.min())}")
    if valid is None:
        return torch.ones_like(rewards, dtype=torch.bool)  # [B]
    if valid.shape != rewards.shape or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape {tuple(rewards.shape)}, got {valid.dtype} "
                         f"{tuple(valid.shape)}")
    return valid


def _float(rewards: torch.Tensor) -> torch.Tensor:
    return rewards if rewards.is_floating_point() else rewards.float()


def group_stats(rewards: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor | None = None) -> GroupStats:
    """Per-group mean, unbiased std and valid count over valid samples, broadcast to each sample.

    The std is unbiased (divides by n - 1) like `torch.std`, which is what verl's GRPO estimator
    (`compute_grpo_outcome_advantage`) and TRL use; DeepSeekMath §4.1 only says "std"."""
    valid = _check(rewards, group_ids, valid)
    rewards = _float(rewards)
    G = int(group_ids.max()) + 1 if group_ids.numel() else 0
    w = valid.to(rewards.dtype)  # [B] 1 for valid samples
    r = torch.where(valid, rewards, torch.zeros_like(rewards))  # [B] invalid (maybe NaN) rewards -> 0
    count = rewards.new_zeros(G).index_add_(0, group_ids, w)  # [G]
    mean = rewards.new_zeros(G).index_add_(0, group_ids, r) / count.clamp(min=1)  # [G]
    sq = rewards.new_zeros(G).index_add_(0, group_ids, w * (r - mean[group_ids]) ** 2)  # [G] sum of squared deviations
    std = (sq / (count - 1).clamp(min=1)).sqrt()  # [G] unbiased; 0 where count < 2
    return GroupStats(mean=mean[group_ids], std=std[group_ids], count=count[group_ids])  # each [B]


def zero_std_groups(rewards: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[B] bool: True for every sample of a group whose valid rewards are all exactly equal (including groups with
    fewer than 2 valid samples). Such groups carry no learning signal; DAPO dynamic sampling drops them.
    Uses an exact max == min comparison, not a std threshold."""
    valid = _check(rewards, group_ids, valid)
    rewards = _float(rewards)
    G = int(group_ids.max()) + 1 if group_ids.numel() else 0
    ids, r = group_ids[valid], rewards[valid]  # [V] valid samples only
    hi = rewards.new_full((G,), -float("inf")).scatter_reduce_(0, ids, r, "amax")  # [G]
    lo = rewards.new_full((G,), float("inf")).scatter_reduce_(0, ids, r, "amin")  # [G]
    count = torch.zeros(G, dtype=torch.long, device=rewards.device).index_add_(0, ids, torch.ones_like(ids))  # [G]
    flat = (count < 2) | (hi == lo)  # [G]
    return flat[group_ids]  # [B]


def _keep(adv: torch.Tensor, stats: GroupStats, valid: torch.Tensor) -> torch.Tensor:
    """Zero the advantage of invalid samples and of groups with fewer than 2 valid samples."""
    keep = valid & (stats.count > 1)  # [B]
    return torch.where(keep, adv, torch.zeros_like(adv))  # [B]


@ADVANTAGES.register("grpo")
def grpo_advantage(rewards: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor | None = None,
                   eps: float = 1e-6) -> torch.Tensor:
    """GRPO outcome advantage, DeepSeekMath §4.1 / verl `compute_grpo_outcome_advantage`:
    (r - group mean) / (group std + eps), std unbiased as in verl (`torch.std`). A group whose valid rewards are
    all equal gets 0."""
    valid = _check(rewards, group_ids, valid)
    stats = group_stats(rewards, group_ids, valid)
    adv = (_float(rewards) - stats.mean) / (stats.std + eps)  # [B]
    adv = torch.where(stats.std > 0, adv, torch.zeros_like(adv))  # [B] all-equal group: 0 even with eps = 0
    return _keep(adv, stats, valid)  # [B]


@ADVANTAGES.register("dr_grpo")
def dr_grpo_advantage(rewards: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor | None = None,
                      eps: float = 1e-6) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"; verl `norm_adv_by_std_in_grpo=False`):
    r - group mean, no division by the std."""
    valid = _check(rewards, group_ids, valid)
    stats = group_stats(rewards, group_ids, valid)
    return _keep(_float(rewards) - stats.mean, stats, valid)  # [B]


@ADVANTAGES.register("rloo")
def rloo_advantage(rewards: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor | None = None,
                   eps: float = 1e-6) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, "Back to Basics"; verl `compute_rloo_outcome_advantage`): r minus the mean of the
    other valid samples of its group, r_i - (sum - r_i) / (n - 1) = (r_i - mean) * n / (n - 1)."""
    valid = _check(rewards, group_ids, valid)
    stats = group_stats(rewards, group_ids, valid)
    adv = (_float(rewards) - stats.mean) * stats.count / (stats.count - 1).clamp(min=1)  # [B]
    return _keep(adv, stats, valid)  # [B]


@ADVANTAGES.register("reinforce")
def reinforce_advantage(rewards: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor | None = None,
                        eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE with a constant baseline (Williams 1992): r - mean reward over all valid samples of the batch.
    Ignores groups, so a group of one still gets a non-zero advantage. No std normalisation."""
    valid = _check(rewards, group_ids, valid)
    rewards = _float(rewards)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))  # [B]
    base = r.sum() / valid.sum().clamp(min=1)  # [] batch-mean baseline
    return torch.where(valid, rewards - base, torch.zeros_like(rewards))  # [B]


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
        last_done: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a [T, N] rollout (CleanRL `ppo.py` convention: dones[t] = 1 means the
    observation at step t started a new episode, so no bootstrapping across it). Returns (advantages, returns)."""
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)  # [T, N]
    last = torch.zeros_like(last_value)  # [N]
    for t in reversed(range(T)):
        next_nonterminal = 1.0 - (last_done if t == T - 1 else dones[t + 1])  # [N]
        next_value = last_value if t == T - 1 else values[t + 1]  # [N]
        delta = rewards[t] + gamma * next_value * next_nonterminal - values[t]  # [N]
        last = delta + gamma * lam * next_nonterminal * last  # [N]
        adv[t] = last
    return adv, adv + values  # [T, N] each
