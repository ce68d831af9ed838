"""Fixtures for the engine tests: a random 3M-parameter Llama (rl.zoo), a "trained" copy of its weights, a LoRA
adapter, prompts of varying length (so left padding is exercised), and at most one live vLLM engine."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from rl.zoo import ARCHS, build_tokenizer, save_random

# Varying lengths exercise left padding; the long one fills a whole vLLM CPU KV block (128 tokens), so prefix
# caching is live and a weight update that skips `reset_prefix_cache` is caught.
PROMPTS = ["12+34=", "7-9=", "hello world, how are you ", "99+1=", "a", "0123456789+0123", "x=", "55-55=",
           "Question: " + "the quick brown fox jumps over the lazy dog. " * 3]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("random-3m")
    save_random(ARCHS["3m"], d, seed=11)
    return d


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def prompts(tokenizer):
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    assert len({len(p) for p in ids}) > 4 and max(len(p) for p in ids) > 128
    return ids


def load_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def base_model(model_dir):
    """The trainer's copy of the initial weights."""
    return load_model(model_dir)


def greedy_tokens(model, prompt: list[int], n: int) -> list[int]:
    """Plain greedy decoding without a cache (reference only: slow, but tiny here)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.fixture(scope="session")
def trained_model(model_dir, prompts, tokenizer):
    """A "trained" copy: every parameter moved by seeded noise, and the EOS embedding (tied to its output row) set
    to 1.02x that of a token the model often emits greedily, so after an update some greedy samples stop with EOS
    and others hit the length limit."""
    m = load_model(model_dir)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad(), one_torch_thread():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5 * p.std().clamp(min=1e-3))
        outs = [greedy_tokens(m, p, 12) for p in prompts]
        counts = torch.bincount(torch.tensor(sum(outs, [])), minlength=len(tokenizer))
        in_some = torch.tensor([sum(t in o for o in outs) for t in range(len(tokenizer))])
        counts[(in_some == 0) | (in_some == len(outs))] = 0  # stop some samples, not all
        x = int(counts.argmax())
        emb = m.get_input_embeddings().weight  # [V, H], tied to lm_head
        emb[tokenizer.eos_token_id] = 1.02 * emb[x]
    return m


@pytest.fixture()
def local_ray():
    """A local Ray (Orchard's quiet start) for the test, shut down after it."""
    import ray

    from rl.cluster import ClusterConfig, init_ray

    started = init_ray(ClusterConfig())
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory, model_dir):
    """A peft LoRA adapter on every linear layer, with non-zero (random) B so it changes the outputs."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    cfg = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    d = tmp_path_factory.mktemp("lora")
    get_peft_model(load_model(model_dir), cfg).save_pretrained(d)
    return d


class OneVLLM:
    """At most one vLLM engine alive at a time (each holds a 2 GiB KV cache): `get(**opts)` reuses the live
    engine if it was built with the same options, else closes it and builds a new one."""

    def __init__(self, model_dir):
        self.model_dir, self.opts, self.engine = model_dir, None, None

    def get(self, **opts):
        from rl.errors import OrchardError
        from rollout.engine import make_engine
        from rollout.vllm_engine import import_vllm

        try:
            import_vllm()
        except OrchardError as e:
            pytest.skip(f"vLLM is not importable here: {e}")
        if self.engine is None or opts != self.opts:
            self.close()
            self.engine = make_engine("vllm", str(self.model_dir), seed=0, **opts)
            self.opts = opts
        return self.engine

    def close(self):
        if self.engine is not None:
            self.engine.close()
            self.engine = None


@pytest.fixture(scope="session")
def vllm_pool(model_dir):
    pool = OneVLLM(model_dir)
    yield pool
    pool.close()


@contextmanager
def one_torch_thread():
    """On a shared 2-core machine torch's two OpenMP threads spin against other jobs: this file's HF tests took
    200 s with 2 threads and 13 s with 1. (vLLM's in-process engine also drops torch to one thread.)"""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield
