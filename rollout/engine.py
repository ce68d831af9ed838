"""The rollout engine protocol, its factory, and the trainer's log-prob recompute (shared so they agree).

Engines: `hf` (transformers, in process; `rollout/hf_engine.py`) and `vllm` (`rollout/vllm_engine.py`).
"""
from __future__ import annotations

from typing import Iterable, Protocol

import torch

from rollout.types import Sample, SamplingParams


class RolloutEngine(Protocol):
    version: int

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Sample]:
        """One sample per prompt entry (callers repeat a prompt G times for a group)."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load full HF-named weights in place (LoRA already merged) and tag later tokens with `version`."""

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], temperature: float) -> list[list[float]]:
        """Log-probs of given completions under the engine's current weights (the weight-sync probe)."""

    def close(self) -> None: ...


def make_engine(kind: str, model_path: str, *, dtype: str = "float32", seed: int = 0, max_batch: int = 256,
                **opts) -> RolloutEngine:
    if kind == "hf":
        from rollout.hf_engine import HFEngine

        return HFEngine(model_path, dtype=dtype, seed=seed, max_batch=max_batch)
    if kind == "vllm":
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, seed=seed, max_batch=max_batch, **opts)
    raise ValueError(f"rollout.engine: unknown engine '{kind}' (hf or vllm)")


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only real tokens, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def policy_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                    temperature: float) -> torch.Tensor:
    """[B, L] log pi(completion token | prefix) at `temperature` (0 means 1: greedy scores the raw distribution).

    input_ids is [B, P + L] with prompts left-padded to P and completions right-padded to L.
    """
    T = temperature if temperature > 0 else 1.0
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                   use_cache=False).logits  # [B, P+L, V]
    logits = logits[:, prompt_len - 1:-1].float() / T  # [B, L, V] position t predicts token t+1
    targets = input_ids[:, prompt_len:]  # [B, L]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)  # [B, L]
