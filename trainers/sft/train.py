"""Supervised warm start for zoo models: teacher-forced cross-entropy on the answer tokens only.

Rows are `{"prompt", "answer"}`; a training sequence is `prompt + answer + EOS`, right-padded, with the loss
masked to the answer and EOS (so the model learns to answer and stop, not to predict prompts).
"""
from __future__ import annotations

import numpy as np
import torch


def encode_rows(tokenizer, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seqs, masks = [], []
    for r in rows:
        p = tokenizer(r["prompt"])["input_ids"]
        a = tokenizer(r["answer"])["input_ids"] + [tokenizer.eos_token_id]
        seqs.append(p + a)
        masks.append([0] * len(p) + [1] * len(a))
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), tokenizer.pad_token_id, dtype=torch.long)  # [N, n]
    attn = torch.zeros((len(seqs), n), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), n), dtype=torch.float32)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, :len(s)] = torch.tensor(s)
        attn[i, :len(s)] = 1
        loss_mask[i, :len(m)] = torch.tensor(m, dtype=torch.float32)
    return ids, attn, loss_mask


def sft(model, tokenizer, rows: list[dict], steps: int, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
        warmup: int = 20, on_step=None, stop_below: float | None = None, cooldown: int = 0,
        window: int = 50, encoded: tuple | None = None) -> list[float]:
    """Train in place; returns the loss per step. Linear warm-up over `warmup` steps, then:
    - `stop_below` None: cosine decay to 0 over `steps`;
    - `stop_below` set: constant lr until the mean loss of the last `window` steps falls below it, then cosine decay
      to 0 over `cooldown` more steps and stop. `steps` caps the whole run (the threshold may never be reached:
      the caller checks the result). Small transformers learning arithmetic sit on a loss plateau for a number of
      steps that varies with the seed and with float rounding; ending the constant phase on the loss rather than
      on a step count makes the result independent of when the model leaves the plateau."""
    ids, attn, loss_mask = encoded if encoded is not None else encode_rows(tokenizer, rows)  # or already encoded
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    decay_from = [None]  # step at which the cool-down began (stop_below mode)

    def schedule(s: int) -> float:
        ramp = min(1.0, (s + 1) / warmup)
        if stop_below is None:
            return ramp * 0.5 * (1 + np.cos(np.pi * min(1.0, s / max(1, steps))))
        if decay_from[0] is None:
            return ramp
        return ramp * 0.5 * (1 + np.cos(np.pi * min(1.0, (s - decay_from[0]) / max(1, cooldown))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(ids), size=batch_size, replace=False))
        x, a, m = ids[idx], attn[idx], loss_mask[idx]
        logits = model(input_ids=x, attention_mask=a).logits[:, :-1]  # [b, n-1, V]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                               reduction="none").view_as(m[:, 1:])
        loss = (ce * m[:, 1:]).sum() / m[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if stop_below is not None:
            if decay_from[0] is None and len(losses) >= window and sum(losses[-window:]) / window < stop_below:
                decay_from[0] = len(losses)
            elif decay_from[0] is not None and len(losses) >= decay_from[0] + cooldown:
                break
        sched.step()
        if on_step is not None:
            on_step(len(losses), model)
    model.eval()
    return losses
