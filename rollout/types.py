"""Typed contracts between rollout engines and trainers.

Shapes: B = number of samples in a batch (prompts x generations), L = padded completion length.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 16
    temperature: float = 1.0
    """0 means greedy. Log-probs are always of the distribution actually sampled from (post-temperature);
    for greedy they are of the unscaled distribution (temperature 1)."""
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Sample:
    """One generated completion."""

    prompt_ids: list[int]
    completion_ids: list[int]
    """Generated token ids, including the EOS token if one was produced."""
    logprobs: list[float]
    """Behaviour log-prob of each completion token under the engine's policy (post-temperature); len == len(completion_ids)."""
    versions: list[int]
    """Policy version that produced each completion token (weights may change mid-generation in async mode)."""
    finish_reason: str = "length"
    """'stop' (EOS produced) or 'length' (hit max_new_tokens)."""


@dataclass
class RolloutBatch:
    """Everything the trainer's update needs, already padded. Built by `trainers.grpo.batch.collate`."""

    input_ids: torch.Tensor  # [B, P+L] prompt (left-padded) + completion (right-padded)
    attention_mask: torch.Tensor  # [B, P+L] 1 for real tokens
    response_mask: torch.Tensor  # [B, L] 1 for completion tokens that count in the loss
    behav_logprobs: torch.Tensor  # [B, L] engine log-probs (0 where response_mask is 0)
    versions: torch.Tensor  # [B, L] policy version per token (-1 where masked)
    advantages: torch.Tensor  # [B] one per sequence (broadcast over tokens by the loss)
    rewards: torch.Tensor  # [B]
    group_ids: torch.Tensor  # [B] which prompt each sample came from
    prompt_len: int  # P: completion token j sits at input position P + j
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: torch.Tensor | slice) -> "RolloutBatch":
        return RolloutBatch(
            input_ids=self.input_ids[idx],
            attention_mask=self.attention_mask[idx],
            response_mask=self.response_mask[idx],
            behav_logprobs=self.behav_logprobs[idx],
            versions=self.versions[idx],
            advantages=self.advantages[idx],
            rewards=self.rewards[idx],
            group_ids=self.group_ids[idx],
            prompt_len=self.prompt_len,
            extras=self.extras,
        )
