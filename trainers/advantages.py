"""Outcome advantage estimators for group-sampled LLM RL, registered by name. Pure functions.

Signature: `fn(rewards [B], group_ids [B] long, valid [B] bool | None, eps) -> advantages [B]`.
Invalid (dropped) samples get advantage 0 and are excluded from their group's statistics. A group with a
single valid sample gets advantage 0 (no baseline to compare with), except for `reinforce`.
"""
from __future__ import annotations

import torch

from rl.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")


def group_stats(rewards: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor | None = None):
    """Per-sample (group mean, group unbiased std, group valid count), over valid samples only."""
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid
    G = int(group_ids.max()) + 1 if len(group_ids) else 0
    w = valid.float()  # [B]
    r = torch.where(valid, rewards.float(), torch.zeros_like(rewards, dtype=torch.float32))  # [B]
    count = torch.zeros(G).index_add_(0, group_ids, w)  # [G]
    total = torch.zeros(G).index_add_(0, group_ids, r)  # [G]
    mean = total / count.clamp(min=1)  # [G]
    sq = torch.zeros(G).index_add_(0, group_ids, w * (r - mean[group_ids]) ** 2)  # [G]
    std = (sq / (count - 1).clamp(min=1)).sqrt()  # [G] unbiased, as torch.std (verl, TRL)
    return mean[group_ids], std[group_ids], count[group_ids]  # each [B]


def zero_std_groups(rewards: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[B] bool: True for samples whose group's valid rewards are all equal (no learning signal; DAPO drops these)."""
    _, std, _ = group_stats(rewards, group_ids, valid)
    return std <= 1e-8


@ADVANTAGES.register("grpo")
def grpo_advantage(rewards, group_ids, valid=None, eps: float = 1e-6):
    """DeepSeekMath GRPO outcome advantage: (r - group mean) / (group std + eps)."""
    mean, std, count = group_stats(rewards, group_ids, valid)
    adv = (rewards - mean) / (std + eps)  # [B]
    return _mask(adv, valid, count)


@ADVANTAGES.register("dr_grpo")
def dr_grpo_advantage(rewards, group_ids, valid=None, eps: float = 1e-6):
    """Dr. GRPO: r - group mean (no std normalisation)."""
    mean, _, count = group_stats(rewards, group_ids, valid)
    return _mask(rewards - mean, valid, count)


@ADVANTAGES.register("rloo")
def rloo_advantage(rewards, group_ids, valid=None, eps: float = 1e-6):
    """RLOO: r minus the mean of the *other* samples of the group: (r - mean) * n / (n - 1)."""
    mean, _, count = group_stats(rewards, group_ids, valid)
    return _mask((rewards - mean) * count / (count - 1).clamp(min=1), valid, count)


@ADVANTAGES.register("reinforce")
def reinforce_advantage(rewards, group_ids, valid=None, eps: float = 1e-6):
    """Plain REINFORCE with a batch-mean baseline: r - mean over all valid samples."""
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid
    base = rewards[valid].mean() if valid.any() else torch.tensor(0.0)
    return torch.where(valid, rewards - base, torch.zeros_like(rewards)).float()


def _mask(adv, valid, count):
    keep = count > 1
    if valid is not None:
        keep &= valid
    return torch.where(keep, adv, torch.zeros_like(adv)).float()


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
        last_done: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a [T, N] rollout (CleanRL convention: dones[t] = 1 means the
    observation at step t started a new episode, so no bootstrapping across it). Returns (advantages, returns)."""
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)  # [T, N]
    last = torch.zeros_like(last_value)  # [N]
    for t in reversed(range(T)):
        next_nonterminal = 1.0 - (last_done if t == T - 1 else dones[t + 1])  # [N]
        next_value = last_value if t == T - 1 else values[t + 1]  # [N]
        delta = rewards[t] + gamma * next_value * next_nonterminal - values[t]
        last = delta + gamma * lam * next_nonterminal * last
        adv[t] = last
    return adv, adv + values
