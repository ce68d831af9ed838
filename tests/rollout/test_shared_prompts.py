"""The `causal` estimator runs a prompt once for all the rows that repeat it (GRPO's G samples). Its log-probs and
gradients must be those of one full forward per row (`causal_full`), whatever the grouping, padding or order."""
from __future__ import annotations

import pytest
import torch

from rollout.logprobs import ESTIMATORS, left_pad, prompt_groups

SHARED, FULL = ESTIMATORS.get("causal"), ESTIMATORS.get("causal_full")


def grouped_batch(prompts, G: int, seed: int = 0, shuffle: bool = True):
    """Each prompt G times with its own random completion (lengths 1-5), rows shuffled so groups are not adjacent."""
    g = torch.Generator().manual_seed(seed)
    rows = [(p, torch.randint(5, 60, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist())
            for p in prompts for _ in range(G)]
    if shuffle:
        rows = [rows[i] for i in torch.randperm(len(rows), generator=g)]
    ids, attn, P = left_pad([r[0] for r in rows], [r[1] for r in rows], pad_id=0)
    resp = torch.zeros(len(rows), ids.shape[1] - P)
    for i, (_, c) in enumerate(rows):
        resp[i, :len(c)] = 1
    return ids, attn, P, resp


def logprobs_and_grads(est, model, ids, attn, P, resp, T=0.7):
    model.zero_grad(set_to_none=True)
    lp = est.logprobs(model, ids, attn, P, T)  # [B, L]
    (lp * resp * torch.linspace(0.5, 1.5, len(lp))[:, None]).sum().backward()  # row weights: any mix-up shows
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return (lp * resp).detach(), grads


class PassCounter:
    """Records the batch size of every forward pass of `model`."""

    def __init__(self, model):
        self.sizes: list[int] = []
        self.handle = model.register_forward_pre_hook(lambda m, a, kw: self.sizes.append(kw["input_ids"].shape[0]),
                                                      with_kwargs=True)


@pytest.mark.parametrize("shuffle", [False, True])
def test_shared_prompt_forward_matches_the_full_forward(model_dir, prompts, shuffle):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    batch = grouped_batch(prompts[:5], G=4, shuffle=shuffle)  # prompts of 1-17 tokens: left padding varies
    counter = PassCounter(model)
    lp_s, g_s = logprobs_and_grads(SHARED, model, *batch)
    assert counter.sizes == [5, 20]  # one pass over the 5 distinct prompts, one over the 20 completions
    lp_f, g_f = logprobs_and_grads(FULL, model, *batch)
    assert counter.sizes[2:] == [20]
    counter.handle.remove()
    assert torch.allclose(lp_s, lp_f, atol=1e-5), (lp_s - lp_f).abs().max()
    for a, b in zip(g_s, g_f):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()


def test_prompt_groups():
    ids = torch.tensor([[0, 7, 8, 1], [0, 7, 8, 2], [7, 7, 8, 3], [0, 7, 8, 4]])
    attn = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    first, inverse = prompt_groups(ids, attn, prompt_len=3)
    # rows 0 and 1 share "7 8"; row 3 has the same ids as 0 but a real token 0 where row 0 has padding
    assert inverse[0] == inverse[1] and len({int(inverse[i]) for i in (0, 2, 3)}) == 3
    assert sorted(first.tolist()) == [0, 2, 3]
    assert prompt_groups(ids[1:], attn[1:], prompt_len=3) is None  # every prompt distinct: nothing to share


def test_no_repeated_prompt_and_gradient_checkpointing_take_the_full_forward(model_dir, prompts):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    counter = PassCounter(model)
    distinct = grouped_batch(prompts[:4], G=1)
    SHARED.logprobs(model, *distinct[:3], 1.0)
    assert counter.sizes == [4]
    model.gradient_checkpointing_enable()
    grouped = grouped_batch(prompts[:3], G=3)
    lp_s, g_s = logprobs_and_grads(SHARED, model, *grouped)
    assert counter.sizes[1:] == [9]  # the cache is off under checkpointing: one full pass
    model.gradient_checkpointing_disable()
    counter.handle.remove()


def test_shared_prompt_forward_through_lora(model_dir, prompts):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    batch = grouped_batch(prompts[:3], G=3, seed=1)
    lp_s, g_s = logprobs_and_grads(SHARED, model, *batch)
    lp_f, g_f = logprobs_and_grads(FULL, model, *batch)
    assert torch.allclose(lp_s, lp_f, atol=1e-5)
    assert len(g_s) > 0 and all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(g_s, g_f))
