"""ArCHer's critic targets and losses and its actor loss, pure functions (ALGORITHMS.md section 1; official code
`archer/algorithms/archer/trainer.py`).

Critic per utterance transition (s, a, r, s', d): twin Q(s, a) and twin V(s) heads, target copies (bars).
    L_Q = sum_j MSE( Q_j(s, a), r + gamma (1 - d) Vbar_j(s') )      # j-th target for the j-th head, no min
    L_V = sum_j MSE( V_j(s),   Qbar_j(s, a_pi) ),  a_pi ~ pi(.|s) sampled fresh, no grad
Actor per token: A = min(Q1, Q2)(s, a_pi) - min(V1, V2)(s) for a fresh a_pi at buffer states;
    L_pi = -mean_b [ A_b * sum_k log pi(a_k | s, a_<k) ]             # REINFORCE, no ratio or clip
Shapes: B transitions; L tokens per (padded) utterance.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def q_targets(rewards: torch.Tensor, dones: torch.Tensor, next_v1_bar: torch.Tensor, next_v2_bar: torch.Tensor,
              gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] each: r + gamma (1 - d) Vbar_j(s'), one target per Q head."""
    notdone = 1.0 - dones.float()  # [B]
    return rewards + gamma * notdone * next_v1_bar, rewards + gamma * notdone * next_v2_bar


def critic_loss(q1: torch.Tensor, q2: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, y1: torch.Tensor,
                y2: torch.Tensor, q1_bar_pi: torch.Tensor, q2_bar_pi: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """L_Q + L_V (all inputs [B]; targets are detached here)."""
    l_q = F.mse_loss(q1, y1.detach()) + F.mse_loss(q2, y2.detach())
    l_v = F.mse_loss(v1, q1_bar_pi.detach()) + F.mse_loss(v2, q2_bar_pi.detach())
    return l_q + l_v, {"critic/q_loss": l_q.item(), "critic/v_loss": l_v.item(), "critic/q_mean": q1.mean().item(),
                       "critic/v_mean": v1.mean().item()}


def utterance_advantage(q1: torch.Tensor, q2: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """[B] min(Q1, Q2)(s, a) - min(V1, V2)(s)."""
    return torch.minimum(q1, q2) - torch.minimum(v1, v2)


def actor_loss(token_logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """-mean_b [A_b * sum_k mask * log pi]: token_logprobs and mask [B, L], advantages [B] (detached)."""
    seq_logprob = (token_logprobs * mask).sum(-1)  # [B]
    loss = -(advantages.detach() * seq_logprob).mean()
    return loss, {"loss/actor": loss.item(), "actor/advantage_mean": advantages.mean().item()}


@torch.no_grad()
def soft_update(target: torch.nn.Module, online: torch.nn.Module, tau: float) -> None:
    """theta_bar <- (1 - tau) theta_bar + tau theta, parameter by parameter."""
    for tp, p in zip(target.parameters(), online.parameters()):
        tp.mul_(1 - tau).add_(p, alpha=tau)
