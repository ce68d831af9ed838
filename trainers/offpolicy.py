"""Off-policy corrections between the behaviour policy (rollout engine, possibly stale) and the old/proximal
policy the PPO ratio is taken against. Registered by name; pure functions (formulas: ALGORITHMS.md section 6).

Signature: `fn(old_logprobs [B,L], behav_logprobs [B,L], response_mask [B,L], cfg) -> (weights [B,L], keep [B,L], metrics)`
`weights` are detached per-token multipliers of the policy-gradient term; `keep` masks tokens out of the loss.
"""
from __future__ import annotations

import torch

from rl.registry import Registry

OFFPOLICY: Registry = Registry("off-policy correction")


def _metrics(log_w, weights, keep, mask):
    """Importance-weight statistics over response tokens; KL(behaviour || old) by the k3 estimator."""
    m = mask.bool()
    n = m.sum().clamp(min=1)
    w = log_w.exp()
    kl = (1.0 / w) - 1 + log_w  # k3 of KL(behav || old) with ratio old/behav = w: E_behav[w^-1... ] form
    return {"offpolicy/is_weight_mean": (w * m).sum().item() / n.item(),
            "offpolicy/is_weight_max": w[m].max().item() if m.any() else 0.0,
            "offpolicy/capped_frac": ((weights < w - 1e-6) & m).sum().item() / n.item(),
            "offpolicy/masked_frac": (m & ~keep.bool()).sum().item() / n.item(),
            "offpolicy/kl_behav_old": (kl * m).sum().item() / n.item()}


@OFFPOLICY.register("none")
def no_correction(old_logprobs, behav_logprobs, response_mask, cfg):
    """On-policy (or ignoring the mismatch): weights 1, keep every response token."""
    log_w = (old_logprobs - behav_logprobs).detach()  # [B, L]
    weights = torch.ones_like(log_w)
    return weights, response_mask, _metrics(log_w, log_w.exp(), response_mask, response_mask)


@OFFPOLICY.register("tis_token")
def tis_token(old_logprobs, behav_logprobs, response_mask, cfg):
    """verl TIS per token: w = min(pi_old / pi_behav, C)."""
    log_w = (old_logprobs - behav_logprobs).detach()  # [B, L]
    weights = log_w.exp().clamp(max=cfg.is_cap)  # [B, L]
    return weights, response_mask, _metrics(log_w, weights, response_mask, response_mask)


@OFFPOLICY.register("tis_seq")
def tis_seq(old_logprobs, behav_logprobs, response_mask, cfg):
    """verl TIS per sequence: w = min(prod_t pi_old / pi_behav, C), broadcast over the sequence's tokens."""
    log_w = (old_logprobs - behav_logprobs).detach() * response_mask  # [B, L]
    seq = log_w.sum(dim=1, keepdim=True).exp().clamp(max=cfg.is_cap)  # [B, 1]
    weights = seq.expand_as(log_w)  # [B, L]
    metrics = _metrics(log_w.sum(1, keepdim=True).expand_as(log_w), weights, response_mask, response_mask)
    return weights, response_mask, metrics


@OFFPOLICY.register("mask")
def mask_correction(old_logprobs, behav_logprobs, response_mask, cfg):
    """prime-rl style masking: drop tokens whose ratio pi_old / pi_behav is outside [mask_low, mask_high]."""
    log_w = (old_logprobs - behav_logprobs).detach()  # [B, L]
    w = log_w.exp()
    keep = response_mask * ((w >= cfg.mask_low) & (w <= cfg.mask_high)).float()  # [B, L]
    return torch.ones_like(w), keep, _metrics(log_w, w, keep, response_mask)


@OFFPOLICY.register("decoupled")
def decoupled(old_logprobs, behav_logprobs, response_mask, cfg):
    """AReaL decoupled PPO: weight pi_prox / pi_behav; tokens whose weight exceeds behav_weight_cap are dropped."""
    log_w = (old_logprobs - behav_logprobs).detach()  # [B, L]
    w = log_w.exp()
    keep = response_mask
    if cfg.behav_weight_cap is not None:
        keep = response_mask * (w <= cfg.behav_weight_cap).float()
    return w, keep, _metrics(log_w, w, keep, response_mask)
