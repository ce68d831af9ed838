"""The policy losses of multi-turn GRPO and filtered BC, pure functions over an episode batch.

Shapes: B episodes, S tokens per (right-padded) episode; `mask` [B, S] is 1.0 at the policy's generated tokens
(observation tokens and padding are 0), so every term below is over policy tokens only.
"""
from __future__ import annotations

import torch

from trainers.offpolicy import OFFPOLICY, OffPolicySettings


def grpo_episode_loss(logprobs: torch.Tensor, behav_logprobs: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, clip_eps: float = 0.2, agg: str = "episode_mean",
                      correction: str = "none", settings: OffPolicySettings | None = None,
                      prox_logprobs: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Multi-turn GRPO (the peers' baseline): every policy token of episode b gets its episode's advantage
    `advantages[b]` (from the episode return, `trainers.advantages.grpo_advantage` over the G episodes of one env
    seed); PPO's clipped ratio.

    correction "none": the ratio is pi / pi_behav, against the behaviour log-probs. Any other registered
    correction (`trainers.offpolicy.OFFPOLICY`, read with `settings`): the ratio is pi / pi_prox with the proximal
    policy the trainer's own at this update (one step per batch: `logprobs` detached, so the ratio starts at 1), and
    each token's surrogate is multiplied by the correction's weight (decoupled PPO: pi_prox / pi_behav); tokens it
    drops add 0 but stay in the normaliser. `prox_logprobs` [B, S]: the proximal policy's log-probs when this is not
    the batch's first update step (agent_grpo `grpo.epochs` > 1: the trainer's policy before the batch's first step).

    agg "episode_mean" (GRPO's 1/G sum_i 1/|o_i| sum_t, per episode):
        loss = -mean_b [ sum_k mask * w * min(ratio * A_b, clip(ratio, 1-eps, 1+eps) * A_b) / sum_k mask ]
    agg "token_mean": the same sum over all policy tokens of the batch / their count. In multi-turn episodes the
    long, failed ones hold most tokens, so token_mean lets their negative advantages dominate the shared tokens
    (measured on twenty_questions: the return fell under token_mean); episode_mean is the default."""
    A = advantages[:, None]  # [B, 1] broadcast over tokens
    metrics: dict[str, float] = {}
    if correction == "none":
        ratio = torch.exp(logprobs - behav_logprobs)  # [B, S]
        weights, keep = torch.ones_like(ratio), mask  # [B, S]
    else:
        prox = logprobs.detach() if prox_logprobs is None else prox_logprobs  # [B, S]
        weights, keep, metrics = OFFPOLICY.get(correction)(prox, behav_logprobs, mask, settings)  # [B, S] each
        ratio = torch.exp(logprobs - prox)  # [B, S] 1 at the first step; its gradient is grad log pi
    surr = torch.minimum(ratio * A, ratio.clamp(1 - clip_eps, 1 + clip_eps) * A)  # [B, S]
    surr = torch.where(keep > 0, surr * weights, torch.zeros_like(surr))  # [B, S] dropped tokens add 0
    n = mask.sum().clamp(min=1)
    if agg == "episode_mean":
        loss = -((surr * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    elif agg == "token_mean":
        loss = -(surr * mask).sum() / n
    else:
        raise ValueError(f"agg must be 'episode_mean' or 'token_mean', got {agg!r}")
    clipped = ((ratio - 1).abs() > clip_eps).float()
    return loss, {"loss/policy": loss.item(), "loss/clipfrac": ((clipped * mask).sum() / n).item(), **metrics}


def top_fraction(returns: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ceil(fraction * B) highest-return episodes (filtered BC's filter; ties: earlier first)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, int(torch.tensor(fraction * len(returns)).ceil().item()))
    order = sorted(range(len(returns)), key=lambda i: (-float(returns[i]), i))
    return torch.tensor(order[:k], dtype=torch.long)


def bc_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Behaviour cloning: mean negative log-likelihood of the policy tokens of the kept episodes."""
    loss = -(logprobs * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"loss/bc_nll": loss.item()}
