"""GRPO-family policy losses, registered by name, and the loss aggregation modes. Pure functions.
Formulas: docs/algorithms.md section 6. Shapes: B samples, L completion tokens.

Settings come straight from the job config's `trainer` section (`trainers.grpo.config.TrainerConfig`: one source
of truth, validated when the config loads). `policy_loss(inputs, cfg, max_len)`, every lookup through a registry:
1. off-policy correction `OFFPOLICY[cfg.offpolicy]` (trainers/offpolicy.py, given `cfg` as its
   `OffPolicySettings`) -> detached weights [B,L], keep [B,L];
2. per-token loss `POLICY_LOSSES[cfg.loss](inputs with response_mask=keep, cfg)` -> [B,L] and its metrics;
3. pg = aggregate(weights * per-token loss, ...), plus kl_coef * aggregate(k3(ref, current), ...).

Normalisers depend only on `response_mask`, B and `max_len`, never on the tokens a correction drops: a dropped
token adds 0 to the numerator but still counts in the denominator (as in AReaL's `ppo_actor_loss_fn`). So a
micro-batch's share of the full-batch loss is known up front (`micro_batch_share`: its tokens for token_mean, its
sequences otherwise), which `trainers/grpo/update.py::update` relies on to make gradient accumulation exact. A
sequence with no response tokens counts as 0 in the seq-mean modes (the 1/G of GRPO).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from rl.registry import Registry, did_you_mean
from trainers.grpo.config import TrainerConfig
from trainers.offpolicy import OFFPOLICY

POLICY_LOSSES: Registry = Registry("policy loss")
AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


@dataclass(frozen=True)
class LossInputs:
    """Per-token log-probs of the sampled completion tokens under three policies, plus advantages. Shapes are
    checked on construction."""

    logprobs: torch.Tensor  # [B, L] current policy pi_theta (requires grad)
    old_logprobs: torch.Tensor  # [B, L] old / proximal policy: recomputed at step start, or behav_logprobs for one epoch
    behav_logprobs: torch.Tensor  # [B, L] behaviour policy (the rollout engine)
    advantages: torch.Tensor  # [B] one per sequence, broadcast over its tokens
    response_mask: torch.Tensor  # [B, L] float, > 0 for tokens that count in the loss (the value weights them)
    ref_logprobs: torch.Tensor | None = None  # [B, L] reference policy, for the KL penalty

    def __post_init__(self):
        if self.logprobs.dim() != 2:
            raise ValueError(f"logprobs must be [B, L], got shape {tuple(self.logprobs.shape)}")
        B, L = self.logprobs.shape
        for name in ("old_logprobs", "behav_logprobs", "response_mask", "ref_logprobs"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != (B, L):
                raise ValueError(f"{name} must be [B, L] = {(B, L)} like logprobs, got {tuple(t.shape)}")
        if tuple(self.advantages.shape) != (B,):
            raise ValueError(f"advantages must be [B] = ({B},), got {tuple(self.advantages.shape)}")


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss [B, L] to a scalar over the tokens where mask > 0 (values elsewhere are ignored).
    The mask's values weight the tokens: 1 for a plain response mask; an estimator's per-token weights otherwise
    (`cj_grpo`: 1/|U_s|, so that the seq mean below is CJ-GRPO's per-step mean).

    - token_mean (DAPO): sum over all tokens / number of tokens.
    - seq_mean_token_mean (GRPO, DeepSeekMath): each sequence's token mean, then the mean over the B sequences.
    - seq_mean_token_sum_norm (Dr. GRPO; verl `loss_agg_mode`): each sequence's token sum / max_len (a constant),
      then the mean over the B sequences."""
    m = mask > 0  # [B, L]
    w = torch.where(m, mask.to(loss_mat.dtype), torch.zeros_like(loss_mat))  # [B, L] token weights
    masked = torch.where(m, loss_mat, torch.zeros_like(loss_mat)) * w  # [B, L]
    if mode == "token_mean":
        return masked.sum() / w.sum().clamp(min=1e-12)
    if mode == "seq_mean_token_mean":
        return (masked.sum(dim=1) / w.sum(dim=1).clamp(min=1e-12)).mean()  # mean of [B]
    if mode == "seq_mean_token_sum_norm":
        if max_len is None:
            raise ValueError("aggregation 'seq_mean_token_sum_norm' needs max_len (the constant normaliser)")
        return (masked.sum(dim=1) / max_len).mean()  # mean of [B]
    raise ValueError(f"unknown loss aggregation '{mode}'{did_you_mean(mode, AGG_MODES)}; known: {', '.join(AGG_MODES)}")


def k3(ref_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) for tokens sampled from pi (DeepSeekMath eq. 4):
    exp(ref - cur) - (ref - cur) - 1, per token, >= 0."""
    d = ref_logprobs - logprobs  # [B, L]
    return d.exp() - d - 1  # [B, L]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask > 0  # [B, L]
    return torch.where(m, x.float(), torch.zeros((), device=x.device)).sum().item() / max(m.sum().item(), 1)


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(inputs: LossInputs, cfg: TrainerConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate per token (Schulman et al. 2017; GRPO/DAPO as in verl `compute_policy_loss`):
    ratio = pi_theta / pi_old, loss = -min(ratio A, clip(ratio, 1 - clip_low, 1 + clip_high) A), and with dual clip
    min(that, -c A) for A < 0. Returns the [B, L] loss and "actor/clipfrac" (tokens where the clipped term binds)
    and "actor/clipfrac_dual" (tokens capped by the dual clip), over response tokens."""
    mask = inputs.response_mask > 0  # [B, L]
    adv = inputs.advantages[:, None]  # [B, 1]
    diff = inputs.logprobs - inputs.old_logprobs  # [B, L]
    log_ratio = torch.where(mask, diff, torch.zeros_like(diff))  # [B, L] padding -> ratio 1, never inf
    ratio = log_ratio.exp()  # [B, L]
    pg1 = -adv * ratio  # [B, L]
    pg2 = -adv * ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)  # [B, L]
    loss = torch.maximum(pg1, pg2)  # [B, L]
    clipped = pg2 > pg1  # [B, L]
    dual = torch.zeros_like(clipped)  # [B, L]
    if cfg.dual_clip_c is not None:
        pg3 = -adv * cfg.dual_clip_c  # [B, 1]
        dual = (adv < 0) & (loss > pg3)  # [B, L]
        loss = torch.where(dual, pg3, loss)  # [B, L]
    return loss, {"actor/clipfrac": _masked_mean(clipped, mask), "actor/clipfrac_dual": _masked_mean(dual, mask)}


@POLICY_LOSSES.register("reinforce")
def reinforce(inputs: LossInputs, cfg: TrainerConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Vanilla policy gradient (Williams 1992): -A log pi_theta per token, no ratio and no clipping (on-policy;
    `policy_loss` still applies the off-policy weights). Reports "actor/clipfrac" 0."""
    loss = -inputs.advantages[:, None] * inputs.logprobs  # [B, L]
    return loss, {"actor/clipfrac": 0.0}


def micro_batch_share(agg: str, response_mask: torch.Tensor, real_rows: int, total_tokens: float,
                      batch_size: int) -> tuple[float, float]:
    """A micro-batch's weight in the full-batch loss under aggregation `agg`, and the weight of its metrics.

    `response_mask` [b, L] is the micro-batch's (its padding rows, if any, all zero), `real_rows` how many of its b
    rows are real, `total_tokens` and `batch_size` the full batch's response tokens and real rows. token_mean: its
    tokens / the batch's tokens; the seq-mean modes: b / batch_size for the loss (padding rows count in the
    micro-batch's mean, as zeros) and real_rows / batch_size for the metrics. Summing share x micro-batch loss over
    micro-batches gives exactly the full-batch loss (see the module docstring)."""
    if agg == "token_mean":
        share = float(response_mask.sum()) / total_tokens
        return share, share
    return len(response_mask) / batch_size, real_rows / batch_size


def policy_loss(inputs: LossInputs, cfg: TrainerConfig, max_len: int | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss and metrics: off-policy weights x the per-token loss `cfg.loss`, + kl_coef x k3 KL, aggregated
    with `cfg.loss_agg` (see the module docstring for what dropped tokens do to the normaliser). `max_len`: the
    constant normaliser of seq_mean_token_sum_norm (Dr. GRPO: the longest completion, rollout.max_new_tokens);
    that mode raises without it.

    Metrics: "loss/pg", "loss/kl" (aggregated k3, before kl_coef), "loss/total", the loss's own ("actor/clipfrac",
    ...), "actor/ratio_mean" (pi_theta / pi_old) and "actor/approx_kl" (k3 estimate of KL(pi_old || pi_theta):
    (r - 1) - log r with r = pi_theta / pi_old, as CleanRL), both masked means over kept tokens, and the
    correction's "offpolicy/*"."""
    if cfg.offpolicy is None:
        raise ValueError("trainer.offpolicy is unset: load the section through its job config (GRPOConfig resolves "
                         "it from max_staleness) or set it")
    weights, keep, metrics = OFFPOLICY.get(cfg.offpolicy)(inputs.old_logprobs, inputs.behav_logprobs,
                                                          inputs.response_mask, cfg)  # [B, L] each
    kept = replace(inputs, response_mask=keep)
    pg_mat, loss_metrics = POLICY_LOSSES.get(cfg.loss)(kept, cfg)  # [B, L]
    keep_b = keep > 0  # [B, L]
    weighted = torch.where(keep_b, pg_mat * weights, torch.zeros_like(pg_mat))  # [B, L] dropped tokens add 0
    pg = aggregate(weighted, inputs.response_mask, cfg.loss_agg, max_len)
    kl = torch.zeros((), device=pg.device)
    loss = pg
    if cfg.kl_coef > 0:
        if inputs.ref_logprobs is None:
            raise ValueError("trainer.kl_coef > 0 needs ref_logprobs in LossInputs")
        kl_mat = k3(inputs.ref_logprobs, inputs.logprobs)  # [B, L]
        kl = aggregate(torch.where(keep_b, kl_mat, torch.zeros_like(kl_mat)), inputs.response_mask, cfg.loss_agg,
                       max_len)
        loss = pg + cfg.kl_coef * kl
    with torch.no_grad():
        diff = inputs.logprobs - inputs.old_logprobs  # [B, L]
        log_r = torch.where(keep_b, diff, torch.zeros_like(diff))  # [B, L]
        metrics.update(loss_metrics)
        metrics.update({"loss/pg": pg.item(), "loss/kl": kl.item(), "loss/total": loss.item(),
                        "actor/ratio_mean": _masked_mean(log_r.exp(), keep),
                        "actor/approx_kl": _masked_mean(log_r.exp() - 1 - log_r, keep)})
    return loss, metrics
