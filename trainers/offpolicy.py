"""Off-policy corrections between the behaviour policy (the rollout engine, possibly several versions stale) and
the old/proximal policy the PPO ratio is taken against. Registered by name; pure functions. Formulas:
docs/algorithms.md section 6.

Signature (`OFFPOLICY`):

    fn(old_logprobs [B,L], behav_logprobs [B,L], response_mask [B,L], settings: OffPolicySettings)
        -> (weights [B,L], keep [B,L], metrics: dict[str, float])

`OffPolicySettings` is this module's own input type (a Protocol: any object with the four knobs, e.g. GRPO's
`trainers.grpo.config.TrainerConfig`), so the module depends on no algorithm that uses it.

- `weights` are detached per-token multipliers of the policy-gradient term, 0 wherever `keep` is 0 (as AReaL does,
  so a huge ratio on a dropped token cannot turn into a NaN gradient).
- `keep` (same dtype as `response_mask`) is the response mask minus the tokens the correction drops. Dropped tokens
  contribute nothing to the loss; see `trainers/grpo/loss.py::policy_loss` for how the aggregation treats them.
- Only tokens with `response_mask` 1 are read: log-probs at padding may hold anything.

Metrics (over response tokens unless said otherwise):
- `offpolicy/is_weight_mean`, `offpolicy/is_weight_max`: the raw, untruncated ratio pi_old / pi_behav, per token,
  or per sequence (broadcast to its tokens) for `tis_seq`. Computed in float64.
- `offpolicy/capped_frac`: fraction of tokens whose weight was truncated at `is_cap` (TIS only).
- `offpolicy/masked_frac`: fraction of tokens dropped from the loss.
- `offpolicy/kl_behav_current`: KL(pi_behav || pi_old) on kept tokens, where pi_old is the policy at the start
  of this update. Estimator: Schulman's k3 with the tokens sampled from pi_behav and w = pi_old / pi_behav:
  w - 1 - log w (non-negative, unbiased).
"""
from __future__ import annotations

import math
from typing import Protocol

import torch

from pydantic import Field, field_validator

from rl.config import Section
from rl.registry import Registry, registered_name

OFFPOLICY: Registry = Registry("off-policy correction")


class OffPolicyConfig(Section):
    """The knobs of the registered corrections, as a config section that a job's trainer section inherits (GRPO's
    `trainer.*`, the agent jobs' `grpo.*`); it satisfies `OffPolicySettings`."""

    offpolicy: str | None = None
    """Off-policy correction (registered in `trainers.offpolicy`): none, tis_token, tis_seq, mask, decoupled.
    Unset (or null): resolved when the config loads, to `decoupled` (AReaL's decoupled PPO) when max_staleness > 0
    and `none` when training is on-policy, so the run's config.yaml records the correction that ran."""
    is_cap: float = Field(2.0, gt=0)
    """`tis_token`/`tis_seq`: truncation cap C, importance weights are min(pi_old / pi_behav, C) (verl 2.0)."""
    mask_low: float = Field(0.125, ge=0, le=1)
    """`mask`: drop tokens whose pi_old / pi_behav is below this (prime-rl token_mask_low; default [UNVERIFIED])."""
    mask_high: float = Field(8.0, ge=1)
    """`mask`: drop tokens whose pi_old / pi_behav is above this (prime-rl token_mask_high; default [UNVERIFIED])."""
    behav_weight_cap: float | None = Field(None, gt=0)
    """`decoupled`: drop tokens whose pi_prox / pi_behav exceeds this (AReaL `behav_imp_weight_cap`); None keeps
    all."""

    @field_validator("offpolicy")
    @classmethod
    def _known_offpolicy(cls, v: str | None) -> str | None:
        return v if v is None else registered_name(OFFPOLICY, v)

    def resolve_offpolicy(self, max_staleness: int) -> None:
        """`offpolicy` unset: decoupled PPO if generation runs ahead (max_staleness > 0), else none."""
        if self.offpolicy is None:
            self.offpolicy = "decoupled" if max_staleness > 0 else "none"


class OffPolicySettings(Protocol):
    """The knobs the corrections read. Range checks belong to whoever builds the settings (GRPO: pydantic bounds on
    `trainer.*`); the corrections assume is_cap > 0, 0 <= mask_low <= 1 <= mask_high, behav_weight_cap > 0 or None."""

    is_cap: float
    """`tis_token`/`tis_seq`: truncation C, weights are min(ratio, C)."""
    mask_low: float
    """`mask`: tokens whose pi_old / pi_behav is below this are dropped."""
    mask_high: float
    """`mask`: tokens whose pi_old / pi_behav is above this are dropped."""
    behav_weight_cap: float | None
    """`decoupled`: tokens whose pi_prox / pi_behav exceeds this are dropped; None keeps all."""


def _log_ratio(old_logprobs: torch.Tensor, behav_logprobs: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """log(pi_old / pi_behav) per token, detached, 0 outside the response mask."""
    if not (old_logprobs.shape == behav_logprobs.shape == response_mask.shape) or old_logprobs.dim() != 2:
        raise ValueError(f"old_logprobs {tuple(old_logprobs.shape)}, behav_logprobs {tuple(behav_logprobs.shape)} "
                         f"and response_mask {tuple(response_mask.shape)} must all be the same [B, L]")
    diff = (old_logprobs - behav_logprobs).detach()  # [B, L]
    return torch.where(response_mask > 0, diff, torch.zeros_like(diff))  # [B, L]


def _metrics(log_w_tok: torch.Tensor, log_w: torch.Tensor, capped: torch.Tensor, keep: torch.Tensor,
             response_mask: torch.Tensor) -> dict[str, float]:
    """`log_w_tok`: per-token log ratio [B, L]; `log_w`: the correction's raw log weight [B, L] (per token or per
    sequence); `capped`: bool [B, L] tokens whose weight was truncated."""
    m, k = response_mask > 0, keep > 0  # [B, L] each
    n, n_keep = m.sum().clamp(min=1).item(), k.sum().clamp(min=1).item()
    w = log_w.double().exp()  # [B, L] raw ratio (float64: a sequence product overflows float32 early)
    w_tok = log_w_tok.double().exp()  # [B, L]
    k3 = w_tok - 1 - log_w_tok.double()  # [B, L] k3 of KL(behav || old), tokens from behav
    zero = torch.zeros((), dtype=torch.float64, device=w.device)
    return {"offpolicy/is_weight_mean": torch.where(m, w, zero).sum().item() / n,
            "offpolicy/is_weight_max": w[m].max().item() if m.any() else 0.0,
            "offpolicy/capped_frac": (capped & m).sum().item() / n,
            "offpolicy/masked_frac": (m & ~k).sum().item() / n,
            "offpolicy/kl_behav_current": torch.where(k, k3, zero).sum().item() / n_keep}


def _finish(weights: torch.Tensor, keep: torch.Tensor):
    """Zero the weights of dropped tokens."""
    return torch.where(keep > 0, weights, torch.zeros_like(weights))  # [B, L]


@OFFPOLICY.register("none")
def no_correction(old_logprobs: torch.Tensor, behav_logprobs: torch.Tensor, response_mask: torch.Tensor,
                  settings: OffPolicySettings):
    """No correction (on-policy, or verl's bypass mode where pi_old := pi_behav): weight 1 on every response token.
    The metrics still report the mismatch."""
    log_w = _log_ratio(old_logprobs, behav_logprobs, response_mask)  # [B, L]
    keep = response_mask
    weights = _finish(torch.ones_like(log_w), keep)  # [B, L]
    return weights, keep, _metrics(log_w, log_w, torch.zeros_like(keep, dtype=torch.bool), keep, response_mask)


@OFFPOLICY.register("tis_token")
def tis_token(old_logprobs: torch.Tensor, behav_logprobs: torch.Tensor, response_mask: torch.Tensor,
              settings: OffPolicySettings):
    """Truncated importance sampling per token (verl `rollout_corr_helper.py`, token level; Yao et al. 2025 "Your
    efficient RL framework secretly brings you off-policy RL training"): w = min(pi_old / pi_behav, is_cap)."""
    log_w = _log_ratio(old_logprobs, behav_logprobs, response_mask)  # [B, L]
    log_cap = math.log(settings.is_cap)
    capped = log_w > log_cap  # [B, L]
    keep = response_mask
    weights = _finish(log_w.clamp(max=log_cap).exp(), keep)  # [B, L]
    return weights, keep, _metrics(log_w, log_w, capped, keep, response_mask)


@OFFPOLICY.register("tis_seq")
def tis_seq(old_logprobs: torch.Tensor, behav_logprobs: torch.Tensor, response_mask: torch.Tensor,
            settings: OffPolicySettings):
    """Truncated importance sampling per sequence (verl `rollout_corr_helper.py`, sequence level):
    w = min(prod_t pi_old / pi_behav, is_cap) = exp(min(sum_t log ratio, log is_cap)), same for all of a sequence's
    tokens. The sum is taken in log space, so a long sequence never overflows."""
    log_w_tok = _log_ratio(old_logprobs, behav_logprobs, response_mask)  # [B, L]
    log_w = log_w_tok.sum(dim=1, keepdim=True).expand_as(log_w_tok)  # [B, L] sequence log ratio, broadcast
    log_cap = math.log(settings.is_cap)
    capped = log_w > log_cap  # [B, L]
    keep = response_mask
    weights = _finish(log_w.clamp(max=log_cap).exp(), keep)  # [B, L]
    return weights, keep, _metrics(log_w_tok, log_w, capped, keep, response_mask)


@OFFPOLICY.register("mask")
def mask_correction(old_logprobs: torch.Tensor, behav_logprobs: torch.Tensor, response_mask: torch.Tensor,
                    settings: OffPolicySettings):
    """Token masking, prime-rl @7e2f0273 style: drop tokens whose ratio pi_old / pi_behav is < mask_low or
    > mask_high (bounds themselves are kept); kept tokens get weight 1 (masking, not truncation)."""
    log_w = _log_ratio(old_logprobs, behav_logprobs, response_mask)  # [B, L]
    w = log_w.exp()  # [B, L]
    inside = (w >= settings.mask_low) & (w <= settings.mask_high)  # [B, L]
    keep = response_mask * inside.to(response_mask.dtype)  # [B, L]
    weights = _finish(torch.ones_like(w), keep)  # [B, L]
    return weights, keep, _metrics(log_w, log_w, torch.zeros_like(inside), keep, response_mask)


@OFFPOLICY.register("decoupled")
def decoupled(old_logprobs: torch.Tensor, behav_logprobs: torch.Tensor, response_mask: torch.Tensor,
              settings: OffPolicySettings):
    """AReaL decoupled PPO (`areal/utils/functional.py::ppo_actor_loss_fn`; Fu et al. 2025): weight
    pi_prox / pi_behav, not truncated; tokens whose weight exceeds `behav_weight_cap` are dropped (None: none are)."""
    log_w = _log_ratio(old_logprobs, behav_logprobs, response_mask)  # [B, L]
    w = log_w.exp()  # [B, L]
    keep = response_mask
    if settings.behav_weight_cap is not None:
        keep = response_mask * (w <= settings.behav_weight_cap).to(response_mask.dtype)  # [B, L]
    weights = _finish(w, keep)  # [B, L]
    return weights, keep, _metrics(log_w, log_w, torch.zeros_like(w, dtype=torch.bool), keep, response_mask)
