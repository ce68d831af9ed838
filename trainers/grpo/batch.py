"""Turning engine samples into the padded `RolloutBatch` the update consumes, and the seeded prompt sampler."""
from __future__ import annotations

import numpy as np
import torch

from rollout.types import RolloutBatch, Sample


class PromptSampler:
    """Cycles through `n` prompts in a fresh seeded permutation each epoch. Its state is two ints (resumable)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation()
            take = min(k - len(out), self.n - self.pos)
            out.extend(int(i) for i in self._perm[self.pos:self.pos + take])
            self.pos += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._perm = self._permutation()


def collate(samples: list[Sample], advantages: torch.Tensor, rewards: torch.Tensor, group_ids: torch.Tensor,
            pad_id: int) -> RolloutBatch:
    """Left-pad prompts to P and right-pad completions to L, so completion token j sits at position P + j."""
    B = len(samples)
    P = max(len(s.prompt_ids) for s in samples)
    L = max(1, max(len(s.completion_ids) for s in samples))
    input_ids = torch.full((B, P + L), pad_id, dtype=torch.long)  # [B, P+L]
    attention_mask = torch.zeros((B, P + L), dtype=torch.long)  # [B, P+L]
    response_mask = torch.zeros((B, L), dtype=torch.float32)  # [B, L]
    behav = torch.zeros((B, L), dtype=torch.float32)  # [B, L]
    versions = torch.full((B, L), -1, dtype=torch.long)  # [B, L]
    for i, s in enumerate(samples):
        p, c = len(s.prompt_ids), len(s.completion_ids)
        input_ids[i, P - p:P] = torch.tensor(s.prompt_ids)
        attention_mask[i, P - p:P + c] = 1
        if c:
            input_ids[i, P:P + c] = torch.tensor(s.completion_ids)
            response_mask[i, :c] = 1.0
            behav[i, :c] = torch.tensor(s.logprobs, dtype=torch.float32)
            versions[i, :c] = torch.tensor(s.versions)
    reveal = None
    if any(s.reveal_steps is not None for s in samples):  # a masked-diffusion engine's trajectories
        reveal = torch.full((B, L), -1, dtype=torch.long)  # [B, L]
        for i, s in enumerate(samples):
            reveal[i, :len(s.reveal_steps)] = torch.tensor(s.reveal_steps, dtype=torch.long)
    return RolloutBatch(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask,
                        behav_logprobs=behav, versions=versions, advantages=advantages.float(),
                        rewards=rewards.float(), group_ids=group_ids.long(), prompt_len=P, reveal_steps=reveal)
