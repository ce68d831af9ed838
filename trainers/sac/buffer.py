"""Transitions and a uniform replay buffer (numpy ring, CPU)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Transitions:
    """A batch of T transitions (numpy, float32): what env runners produce and the buffer stores."""

    obs: np.ndarray  # [T, obs_dim]
    actions: np.ndarray  # [T, act_dim]
    rewards: np.ndarray  # [T]
    next_obs: np.ndarray  # [T, obs_dim]  (the true final observation when the episode ended)
    terminated: np.ndarray  # [T]  1.0 on a true terminal state (not on truncation): no bootstrap

    def __len__(self) -> int:
        return len(self.rewards)

    @staticmethod
    def concat(parts: list["Transitions"]) -> "Transitions":
        return Transitions(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                             ("obs", "actions", "rewards", "next_obs", "terminated")))


@dataclass
class Batch:
    """A sampled minibatch as torch tensors; B = batch size."""

    obs: torch.Tensor  # [B, obs_dim]
    actions: torch.Tensor  # [B, act_dim]
    rewards: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [B, obs_dim]
    terminated: torch.Tensor  # [B]


class ReplayBuffer:
    """Fixed capacity; the oldest transitions are overwritten first; uniform sampling with replacement."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, act_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.pos, self.size = 0, 0

    def __len__(self) -> int:
        return self.size

    def add(self, t: Transitions) -> None:
        n = len(t)
        if n > self.capacity:  # only the newest `capacity` survive anyway
            t = Transitions(*(getattr(t, f)[-self.capacity:] for f in ("obs", "actions", "rewards", "next_obs", "terminated")))
            n = self.capacity
        idx = (self.pos + np.arange(n)) % self.capacity  # [n], wraps around
        self.obs[idx], self.actions[idx], self.rewards[idx] = t.obs, t.actions, t.rewards
        self.next_obs[idx], self.terminated[idx] = t.next_obs, t.terminated
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = rng.integers(0, self.size, size=batch_size)  # [B]
        return Batch(*(torch.from_numpy(a[idx]) for a in (self.obs, self.actions, self.rewards, self.next_obs, self.terminated)))
