"""The GRPO update on one rank: sharding a step's batch over ranks, micro-batched gradient accumulation, and the
log-probs the update and the weight-sync probe need, all scored by the policy's log-prob estimator.

Exactness: the controller splits the batch into equal-length shards (padding the last ones with rows whose response
mask is zero) and every rank weights its micro-batch losses by their share of the *global* batch
(`trainers.grpo.loss.micro_batch_share`), times the world size (both DDP and FSDP2 average gradients over ranks).
The summed gradient is then exactly the single-rank full-batch gradient; `tests/trainers/grpo/test_ranks.py` checks
2 ranks against 1 after real optimizer steps. Every rank runs the same number of forward passes (equal shard
lengths), which FSDP2's collective forward needs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import torch

from rollout.logprobs import batch_logprobs
from rollout.types import RolloutBatch, Sample
from trainers.grpo.batch import collate
from trainers.grpo.config import GRPOConfig
from trainers.grpo.loss import LossInputs, micro_batch_share, policy_loss
from trainers.grpo.policy import Policy


@dataclass(frozen=True)
class Shard:
    """This rank's rows of a step's batch: the first `n_real` are real, the rest padding (response mask 0).
    `batch_size` and `total_tokens` are the global batch's (real rows, response tokens), which every loss is
    weighted against; `world` is the number of ranks whose gradients get averaged."""

    batch: RolloutBatch
    n_real: int
    batch_size: int
    total_tokens: float
    world: int = 1


def whole(batch: RolloutBatch) -> Shard:
    """The whole batch as the one shard of a single rank."""
    return Shard(batch, len(batch), len(batch), float(batch.response_mask.sum().clamp(min=1)), 1)


def shard(batch: RolloutBatch, world: int) -> list[Shard]:
    """`world` contiguous shards of equal length ceil(B / world); short ones are padded with a copy of row 0 whose
    response mask is zero (it adds nothing to the loss or the gradient)."""
    B = len(batch)
    per = -(-B // world)
    total = float(batch.response_mask.sum().clamp(min=1))
    out = []
    for r in range(world):
        rows = list(range(r * per, min(B, (r + 1) * per)))
        n_real = len(rows)
        idx = torch.tensor(rows + [0] * (per - n_real), dtype=torch.long)
        part = batch.select(idx)
        if n_real < per:
            part.response_mask = part.response_mask.clone()
            part.response_mask[n_real:] = 0.0
            part.advantages = part.advantages.clone()
            part.advantages[n_real:] = 0.0
        out.append(Shard(part, n_real, B, total, world))
    return out


def micro_batches(batch: RolloutBatch, size: int) -> Iterator[RolloutBatch]:
    """Consecutive slices of `size` rows (the last may be shorter)."""
    for start in range(0, len(batch), size):
        yield batch.select(slice(start, start + size))


def trim(mb: RolloutBatch) -> tuple[RolloutBatch, slice]:
    """`mb` without the columns none of its rows uses (prompt padding on the left, completion padding on the
    right), so that a micro-batch is never padded beyond its own longest sequence. Returns it and the completion
    columns kept, to slice [b, L] tensors computed for the whole batch. Dropped columns are masked out of
    attention and of the loss, so the log-probs of the kept ones are the same (up to float rounding)."""
    used = mb.attention_mask.bool().any(dim=0)  # [P+L]
    P = mb.prompt_len
    first = min(int(used[:P].long().argmax()), P - 1) if used[:P].any() else P - 1  # first prompt column in use
    comp = used[P:].nonzero()
    L = int(comp.max()) + 1 if len(comp) else 1
    if first == 0 and L == mb.response_mask.shape[1]:
        return mb, slice(None)
    return replace(mb, input_ids=mb.input_ids[:, first:P + L], attention_mask=mb.attention_mask[:, first:P + L],
                   response_mask=mb.response_mask[:, :L], behav_logprobs=mb.behav_logprobs[:, :L],
                   versions=mb.versions[:, :L], prompt_len=P - first,
                   reveal_steps=None if mb.reveal_steps is None else mb.reveal_steps[:, :L]), slice(0, L)


def ref_logprobs(policy: Policy, batch: RolloutBatch, temperature: float, iteration: int = 0) -> torch.Tensor | None:
    """[b, L] log-probs of the frozen reference (the base model with adapters off, under LoRA), or None if the
    policy has none."""
    est, dev = policy.estimator, policy.device
    if policy.ref is not None:
        with torch.no_grad():
            return batch_logprobs(est, policy.ref, batch, dev, temperature, iteration)
    if policy.lora:  # the reference is the base model: the same weights with adapters switched off
        with torch.no_grad(), policy.model.disable_adapter():
            return batch_logprobs(est, policy.model, batch, dev, temperature, iteration)
    return None


def update(policy: Policy, sh: Shard, cfg: GRPOConfig) -> dict:
    """`ppo_epochs` optimizer steps over this rank's shard, accumulating gradients over micro-batches so that the
    result equals one full-batch step (each micro-batch's loss is weighted by its share of the global batch).
    The old (proximal) log-probs come from where `cfg.old_logprobs` says. Metrics are this rank's share of the
    global averages: the controller sums them over ranks."""
    t, T = cfg.trainer, max(cfg.rollout.temperature, 1e-6)
    batch, dev, est = sh.batch, policy.device, policy.estimator
    params = [p for p in policy.model.parameters() if p.requires_grad]
    source = cfg.old_logprobs
    iters = t.ppo_epochs if getattr(est, "mask_per_iteration", False) else 1  # d1: a fresh mask per inner iteration
    with torch.no_grad():
        old = [batch.behav_logprobs] * iters  # [b, L] per iteration's mask
        if source == "recompute":
            policy.model.eval()
            old = [torch.cat([batch_logprobs(est, policy.model, mb, dev, T, it).float().cpu()
                              for mb in micro_batches(batch, t.micro_batch_size)]) for it in range(iters)]  # [b, L]
            policy.model.train()
        ref = None
        if t.kl_coef > 0:
            ref = [torch.cat([ref_logprobs(policy, mb, T, it).float().cpu()
                              for mb in micro_batches(batch, t.micro_batch_size)]) for it in range(iters)]  # [b, L]
    starts = list(range(0, len(batch), t.micro_batch_size))
    metrics: dict[str, float] = {}
    for epoch in range(t.ppo_epochs):
        it = epoch % iters
        policy.optimizer.zero_grad(set_to_none=True)
        for j, start in enumerate(starts):
            idx = slice(start, min(len(batch), start + t.micro_batch_size))
            mb, cols = trim(batch.select(idx))
            real_rows = max(0, min(sh.n_real, idx.stop) - start)
            with policy.strategy.grad_sync(policy.fwd, last=j == len(starts) - 1):
                lp = batch_logprobs(est, policy.fwd, mb, dev, T, it)  # [mb, L]
                old_mb = lp.detach().float() if source == "current" else old[it][idx][:, cols].to(dev)  # [mb, L]
                inputs = LossInputs(logprobs=lp.float(), old_logprobs=old_mb, behav_logprobs=mb.behav_logprobs.to(dev),
                                    advantages=mb.advantages.to(dev), response_mask=mb.response_mask.to(dev),
                                    ref_logprobs=None if ref is None else ref[it][idx][:, cols].to(dev))
                loss, m = policy_loss(inputs, t, max_len=cfg.rollout.max_new_tokens)
                share, m_share = micro_batch_share(t.loss_agg, mb.response_mask, real_rows, sh.total_tokens,
                                                   sh.batch_size)
                (loss * (share * sh.world)).backward()  # DDP and FSDP2 average gradients over the world
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) * m_share
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        policy.optimizer.step()
        policy.scheduler.step()
    metrics = {k: v / t.ppo_epochs for k, v in metrics.items()}
    metrics["actor/grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    metrics["actor/lr"] = policy.scheduler.get_last_lr()[0]
    return metrics


@torch.no_grad()
def probe_logprobs(policy: Policy, probe: list[Sample]) -> list[list[float]]:
    """The trainer's T=1 log-probs of the weight-sync probe's completions (what every worker must reproduce)."""
    z = torch.zeros(len(probe))
    b = collate(probe, z, z, z.long(), policy.tokenizer.pad_token_id)
    was_training = policy.model.training
    policy.model.eval()
    lp = policy.estimator.logprobs(policy.model, b.input_ids.to(policy.device), b.attention_mask.to(policy.device),
                                   b.prompt_len, 1.0)  # [n, L]
    policy.model.train(was_training)
    return [lp[i, :len(s.completion_ids)].float().cpu().tolist() for i, s in enumerate(probe)]
