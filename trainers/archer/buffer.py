"""ArCHer's replay buffer of utterance transitions (a ring buffer, uniform sampling with replacement, as
`archer/data/utils.py`). A transition keeps the policy's token ids of the state (to sample a fresh a_pi and score
it) and the texts the critic reads."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rollout.types import Trajectory


@dataclass
class Transition:
    state_ids: list[int]
    """The policy's context ids before the utterance."""
    state: str
    """The history as text (the critic's input)."""
    action: str
    reward: float
    next_state: str
    done: bool


def history_texts(traj: Trajectory, intro: str) -> list[str]:
    """The critic's text of the state before each step, and after the last one (len(steps) + 1)."""
    texts = [intro]
    for s in traj.steps:
        texts.append(texts[-1] + s.info["utterance"] + "\n" + s.info["observation"])
    return texts


def transitions(traj: Trajectory, intro: str) -> list[Transition]:
    texts = history_texts(traj, intro)
    return [Transition(s.context_ids, texts[t], s.info["utterance"], float(s.reward or 0.0), texts[t + 1],
                       bool(s.done)) for t, s in enumerate(traj.steps)]


class ReplayBuffer:
    def __init__(self, capacity: int):
        self.capacity, self.items, self.next = capacity, [], 0

    def __len__(self) -> int:
        return len(self.items)

    def add(self, ts: list[Transition]) -> None:
        for t in ts:
            if len(self.items) < self.capacity:
                self.items.append(t)
            else:
                self.items[self.next] = t
            self.next = (self.next + 1) % self.capacity

    def sample(self, n: int, rng: np.random.Generator) -> list[Transition]:
        if not self.items:
            raise ValueError("ReplayBuffer.sample: the buffer is empty")
        return [self.items[i] for i in rng.integers(0, len(self.items), n)]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "next": self.next, "items": [asdict(t) for t in self.items]}

    def load_state_dict(self, d: dict) -> None:
        self.capacity, self.next = d["capacity"], d["next"]
        self.items = [Transition(**t) for t in d["items"]]
