"""SAC losses (CleanRL sac_continuous_action.py; Haarnoja et al. 2018), pure functions: tensors and floats in,
(loss, metrics) out. B = minibatch, A = action dimensions.
"""
from __future__ import annotations

import math

import torch


def squashed_gaussian(mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor, action_scale: torch.Tensor,
                      action_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised tanh-Gaussian sample and its log-probability.

    u = mean + std * noise, action = tanh(u) * scale + bias,
    log pi(action) = sum_A [log N(u; mean, std) - log(scale * (1 - tanh(u)^2) + 1e-6)]  (change of variables).
    """
    std = log_std.exp()  # [B, A]
    u = mean + std * noise  # [B, A]
    y = torch.tanh(u)
    action = y * action_scale + action_bias  # [B, A]
    log_normal = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)  # [B, A]: log N(u; mean, std)
    logp = (log_normal - torch.log(action_scale * (1 - y.pow(2)) + 1e-6)).sum(-1)  # [B]
    return action, logp


def soft_q_target(reward: torch.Tensor, terminated: torch.Tensor, next_q1: torch.Tensor, next_q2: torch.Tensor,
                  next_logp: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * (min(Q1', Q2') - alpha * log pi(a'|s')), all [B]. Truncation bootstraps."""
    next_v = torch.minimum(next_q1, next_q2) - alpha * next_logp  # [B]
    return reward + gamma * (1.0 - terminated) * next_v


def q_loss(q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor):
    """MSE of both Q networks to the (detached) soft target, summed: [B] each."""
    target = target.detach()
    qf1_loss = (q1 - target).pow(2).mean()
    qf2_loss = (q2 - target).pow(2).mean()
    loss = qf1_loss + qf2_loss
    metrics = {"losses/qf1_loss": qf1_loss.item(), "losses/qf2_loss": qf2_loss.item(), "losses/qf_loss": loss.item() / 2,
               "losses/qf1_values": q1.mean().item(), "losses/qf2_values": q2.mean().item()}
    return loss, metrics


def actor_loss(q1_pi: torch.Tensor, q2_pi: torch.Tensor, logp: torch.Tensor, alpha: float):
    """mean(alpha * log pi(a|s) - min(Q1(s,a), Q2(s,a))) for a ~ pi(.|s), reparameterised: [B] each."""
    loss = (alpha * logp - torch.minimum(q1_pi, q2_pi)).mean()
    return loss, {"losses/actor_loss": loss.item(), "losses/entropy": -logp.mean().item()}


def alpha_loss(log_alpha: torch.Tensor, logp: torch.Tensor, target_entropy: float):
    """Temperature loss mean(-alpha * (log pi + target_entropy)) with log pi detached (CleanRL's form):
    alpha grows when the entropy -log pi is below the target, shrinks when above."""
    loss = (-log_alpha.exp() * (logp.detach() + target_entropy)).mean()
    return loss, {"losses/alpha_loss": loss.item(), "losses/alpha": log_alpha.exp().item()}
