"""Masked-diffusion supervised training (LLaDA / d1 `SFT/sft_trainer.py`): the warm start of the zoo's `tiny-mdlm`.

A training sequence is `prompt + answer + EOS...` with the answer and its EOS fill making a canvas of exactly L
positions (LLaDA pads responses with EOS and trains on them, so the model learns to end by filling the rest of the
canvas with EOS). Per sequence: t ~ U(0, 1), p = (1 - eps) t + eps, each canvas position is masked with
probability p, and the loss is the cross-entropy on masked positions weighted by 1/p, summed and divided by the
number of canvas positions (`mdlm_loss`). Prompt tokens are never masked and never scored.
"""
from __future__ import annotations

import numpy as np
import torch

EPS = 1e-3
"""LLaDA's floor on the masking probability, p = (1 - eps) t + eps."""


def mdlm_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, p_mask: torch.Tensor) -> torch.Tensor:
    """sum over masked positions of CE(logits, target) / p, divided by the number of canvas positions B x L.

    logits [B, L, V] at the canvas positions, targets [B, L] the clean tokens, masked [B, L] bool, p_mask [B] each
    sequence's masking probability."""
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                           reduction="none").view_as(targets)  # [B, L]
    weighted = torch.where(masked, ce / p_mask[:, None], torch.zeros_like(ce))  # [B, L]
    return weighted.sum() / targets.numel()


def encode_canvas(tokenizer, rows: list[dict], L: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids [N, P+L], attention [N, P+L], P): prompts left-padded to P, each answer + EOS fill to exactly L tokens."""
    prompts = [tokenizer(r["prompt"])["input_ids"] for r in rows]
    answers = [tokenizer(r["answer"])["input_ids"] for r in rows]
    too_long = [r["answer"] for r, a in zip(rows, answers) if len(a) >= L]
    if too_long:
        raise ValueError(f"answer '{too_long[0]}' does not fit a canvas of {L} tokens with an EOS")
    P = max(len(p) for p in prompts)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    ids = torch.full((len(rows), P + L), pad, dtype=torch.long)  # [N, P+L]
    attn = torch.ones((len(rows), P + L), dtype=torch.long)  # [N, P+L]
    for i, (p, a) in enumerate(zip(prompts, answers)):
        ids[i, P - len(p):P] = torch.tensor(p)
        attn[i, :P - len(p)] = 0
        ids[i, P:] = torch.tensor(a + [eos] * (L - len(a)))
    return ids, attn, P


def mdlm_sft(model, tokenizer, rows: list[dict], L: int, steps: int, batch_size: int = 128, lr: float = 1e-3,
             seed: int = 0, warmup: int = 100) -> list[float]:
    """Train `model` in place with `mdlm_loss` for `steps` AdamW steps (linear warm-up, cosine decay to 0); returns
    the loss per step. Reproducible from `seed` (row sampling and masks)."""
    from rollout.diffusion_logprobs import mask_token_id

    ids, attn, P = encode_canvas(tokenizer, rows, L)
    mid = mask_token_id(model, tokenizer)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))))
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(rows), size=batch_size, replace=False))
        x0, a = ids[idx], attn[idx]  # [b, P+L]
        t = torch.rand(batch_size, generator=gen)  # [b]
        p = (1 - EPS) * t + EPS  # [b]
        masked = torch.rand((batch_size, L), generator=gen) < p[:, None]  # [b, L]
        x = x0.clone()
        x[:, P:] = torch.where(masked, mid, x0[:, P:])
        logits = model(input_ids=x, attention_mask=a, position_ids=(a.cumsum(-1) - 1).clamp(min=0)).logits[:, P:]
        loss = mdlm_loss(logits.float(), x0[:, P:], masked, p)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses
