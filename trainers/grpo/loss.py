"""GRPO-family policy losses, registered by name, and the loss aggregation modes. Pure functions.

`policy_loss(inputs, cfg, name)` = off-policy correction (trainers/offpolicy.py) -> per-token loss from the
registered policy loss -> optional k3 KL to the reference -> aggregation. Shapes: B samples, L completion tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rl.registry import Registry
from trainers.offpolicy import OFFPOLICY

POLICY_LOSSES: Registry = Registry("policy loss")


@dataclass
class LossInputs:
    logprobs: torch.Tensor  # [B, L] current policy (requires grad)
    old_logprobs: torch.Tensor  # [B, L] old / proximal policy (the PPO ratio's denominator)
    behav_logprobs: torch.Tensor  # [B, L] rollout engine (behaviour policy)
    advantages: torch.Tensor  # [B]
    response_mask: torch.Tensor  # [B, L] float
    ref_logprobs: torch.Tensor | None = None  # [B, L] reference model, for the KL penalty


@dataclass
class LossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip_c: float | None = None
    agg: str = "seq_mean_token_mean"
    max_len: int | None = None
    kl_coef: float = 0.0
    offpolicy: str = "none"
    is_cap: float = 2.0
    mask_low: float = 0.5
    mask_high: float = 2.0
    behav_weight_cap: float | None = None


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int | None = None) -> torch.Tensor:
    """token_mean (DAPO): sum / number of tokens. seq_mean_token_mean (GRPO): mean over each sequence's tokens,
    then over sequences. seq_mean_token_sum_norm (Dr. GRPO): each sequence's sum / max_len, mean over sequences."""
    if mode == "token_mean":
        return (loss_mat * mask).sum() / mask.sum().clamp(min=1)
    if mode == "seq_mean_token_mean":
        per_seq = (loss_mat * mask).sum(1) / mask.sum(1).clamp(min=1)  # [B]
        return per_seq.mean()
    if mode == "seq_mean_token_sum_norm":
        norm = max_len if max_len else loss_mat.shape[1]
        return ((loss_mat * mask).sum(1) / norm).mean()
    raise ValueError(f"unknown loss aggregation '{mode}'")


def k3(ref_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref): exp(ref - cur) - (ref - cur) - 1 (>= 0, unbiased)."""
    d = ref_logprobs - logprobs
    return d.exp() - d - 1


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(inputs: LossInputs, cfg: LossConfig):
    """Per-token -min(ratio A, clip(ratio, 1-eps_low, 1+eps_high) A), ratio = pi / pi_old; optional dual clip
    (for A < 0 the loss is capped at -c A). Returns ([B, L] loss, [B, L] clipped indicator)."""
    adv = inputs.advantages[:, None]  # [B, 1]
    ratio = (inputs.logprobs - inputs.old_logprobs).exp()  # [B, L]
    pg1 = -ratio * adv
    pg2 = -ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high) * adv
    loss = torch.maximum(pg1, pg2)  # [B, L]
    clipped = (pg2 > pg1).float()
    if cfg.dual_clip_c is not None:
        pg3 = -cfg.dual_clip_c * adv
        dual = (adv < 0) & (loss > pg3)
        loss = torch.where(dual, pg3.expand_as(loss), loss)
        clipped = torch.maximum(clipped, dual.float())
    return loss, clipped


@POLICY_LOSSES.register("reinforce")
def reinforce(inputs: LossInputs, cfg: LossConfig):
    """-A log pi (no ratio, no clip)."""
    return -inputs.advantages[:, None] * inputs.logprobs, torch.zeros_like(inputs.logprobs)


def policy_loss(inputs: LossInputs, cfg: LossConfig, name: str = "ppo_clip"):
    """The full loss (scalar) and metrics: correction weights x policy loss + kl_coef x k3, aggregated."""
    weights, keep, metrics = OFFPOLICY.get(cfg.offpolicy)(inputs.old_logprobs, inputs.behav_logprobs, inputs.response_mask, cfg)
    pg_mat, clipped = POLICY_LOSSES.get(name)(inputs, cfg)  # [B, L] each
    pg = aggregate(pg_mat * weights, keep, cfg.agg, cfg.max_len)
    loss = pg
    kl = torch.zeros(())
    if cfg.kl_coef > 0:
        if inputs.ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        kl = aggregate(k3(inputs.ref_logprobs, inputs.logprobs), keep, cfg.agg, cfg.max_len)
        loss = pg + cfg.kl_coef * kl
    with torch.no_grad():
        m = inputs.response_mask
        n = m.sum().clamp(min=1)
        log_r = inputs.logprobs - inputs.old_logprobs
        metrics.update({"loss/pg": pg.item(), "loss/kl": kl.item(), "loss/total": loss.item(),
                        "actor/clipfrac": (clipped * m).sum().item() / n.item(),
                        "actor/ratio_mean": (log_r.exp() * m).sum().item() / n.item(),
                        "actor/approx_kl": (k3(inputs.old_logprobs, inputs.logprobs) * m).sum().item() / n.item()})
    return loss, metrics
