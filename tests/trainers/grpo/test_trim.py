"""Micro-batches are trimmed to their own longest sequence (`trainers.grpo.update.trim`): the same update, less
padding."""
from __future__ import annotations

import pytest
import torch

from rollout.types import Sample
from trainers.grpo import update as upd
from trainers.grpo.batch import collate
from trainers.grpo.config import GRPOConfig
from trainers.grpo.policy import read_weights
from trainers.grpo.ranks import InProcessTrainer


def _batch():
    """Six rows: the first three short (prompt 2, completion 1-2), the last three long (prompt 6, completion 5)."""
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 1), (2, 2), (2, 1), (6, 5), (5, 5), (6, 4)]
    samples = [Sample(torch.randint(3, 60, (p,), generator=g).tolist(), torch.randint(3, 60, (c,), generator=g).tolist(),
                      [-4.0] * c, [0] * c) for p, c in shapes]
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.5, -1.5])
    return collate(samples, adv, adv, torch.arange(6), pad_id=0)


def test_trim_drops_only_columns_no_row_uses():
    b = _batch()  # P = 6, L = 5
    short, cols = upd.trim(b.select(slice(0, 3)))
    assert short.prompt_len == 2 and short.input_ids.shape == (3, 4) and cols == slice(0, 2)
    assert torch.equal(short.input_ids, b.input_ids[:3, 4:8]) and torch.equal(short.response_mask, b.response_mask[:3, :2])
    long_, cols = upd.trim(b.select(slice(3, 6)))
    assert long_.input_ids.shape == (3, 11) and cols == slice(None)  # nothing to drop: the same batch back


def test_trimmed_update_equals_the_padded_one(monkeypatch):
    """Two optimizer steps with micro-batches of 3 (one short, one long) move the weights as the untrimmed
    update does, and report the same losses."""
    from rl.zoo import resolve_model_path

    model_dir = resolve_model_path("random-3m")
    cfg = GRPOConfig.model_validate({"model": {"path": str(model_dir)}, "rollout": {"max_new_tokens": 5},
                                     "trainer": {"lr": 1e-3, "micro_batch_size": 3, "ppo_epochs": 2, "kl_coef": 0.1},
                                     "cluster": {"backend": "local"}})
    results = []
    for trimming in (True, False):
        if not trimming:
            monkeypatch.setattr(upd, "trim", lambda mb: (mb, slice(None)))
        torch.manual_seed(0)
        tr = InProcessTrainer(cfg, model_dir)
        metrics = [tr.update(_batch()) for _ in range(2)]
        results.append((metrics, tr.weights()[0]))
    (m_trim, w_trim), (m_pad, w_pad) = results
    for a, b in zip(m_trim, m_pad):
        assert a["loss/pg"] == pytest.approx(b["loss/pg"], rel=1e-5, abs=1e-7)
        assert a["actor/grad_norm"] == pytest.approx(b["actor/grad_norm"], rel=1e-5)
    assert m_trim[1]["actor/grad_norm"] > 0
    # Adam amplifies float rounding on elements whose gradient is ~0, so compare the updates as a whole: the two
    # differ by far less than either moved the weights
    w0 = read_weights(model_dir)
    for k in w0:  # (the tied lm_head is the embedding)
        moved = (w_pad[k] - w0[k]).norm()
        assert (w_trim[k] - w_pad[k]).norm() < 1e-2 * moved, k
