"""PPO losses (CleanRL ppo.py), pure functions: tensors and floats in, (loss, metrics) out; and the diagonal
Gaussian log-prob/entropy of the continuous-action policy (CleanRL ppo_continuous_action.py).
"""
from __future__ import annotations

import math

import torch


def ppo_policy_loss(new_logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor,
                    clip_coef: float, norm_adv: bool = True):
    """Clipped surrogate -min(ratio A, clip(ratio, 1 +- eps) A), mean over the minibatch [M]."""
    if norm_adv and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = new_logprob - old_logprob  # [M]
    ratio = log_ratio.exp()
    pg = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()
    with torch.no_grad():
        metrics = {"losses/approx_kl": ((ratio - 1) - log_ratio).mean().item(),
                   "losses/clipfrac": ((ratio - 1.0).abs() > clip_coef).float().mean().item()}
    return pg, metrics


def value_loss(new_value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor, clip_coef: float | None):
    """0.5 * mean squared error to the returns; with clip_coef, the max of the clipped and unclipped errors."""
    unclipped = (new_value - returns) ** 2  # [M]
    if clip_coef is None:
        return 0.5 * unclipped.mean()
    clipped = (old_value + (new_value - old_value).clamp(-clip_coef, clip_coef) - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped).mean()


LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log N(action; mean, diag(exp(log_std)^2)), summed over the action dims: [B, A] each -> [B]."""
    z = (action - mean) * torch.exp(-log_std)  # [B, A] standardised action
    return (-0.5 * z.pow(2) - log_std - LOG_SQRT_2PI).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian, sum over dims of 1/2 + log(sqrt(2 pi)) + log_std: [B, A] -> [B]."""
    return (0.5 + LOG_SQRT_2PI + log_std).sum(-1)
