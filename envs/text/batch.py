"""`TextEnvBatch`: many single-episode text envs stepped side by side, every call checked.

The batched API the multi-turn runner uses:

    batch = TextEnvBatch("twenty_questions", factory, max_turns=20, on_error="raise")
    observations = batch.reset(seeds)                         # one per episode
    observations, rewards, dones, infos = batch.step(utterances)   # one utterance per episode; None for a finished one

A finished episode's entry is ("", 0.0, True, {}) on every later step. Every env call is checked: an env that
raises, returns something that is not (str, number, bool, dict), a non-finite reward, or is still running after
`max_turns` turns either stops the job with a `TextEnvError` naming the env, the episode seed and the turn
(`on_error: raise`, the default), or has that episode dropped (`on_error: drop`): it is marked done, its reason is
recorded in `dropped` and `dropped_reasons`, and the trainers leave it out. Never a silent zero.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

from envs.text.base import TextEnv
from rl.errors import OrchardError


class TextEnvError(OrchardError):
    """A text environment raised, returned the wrong type, or never ended. Names the env, the seed and the turn."""


class TextEnvBatch:
    def __init__(self, name: str, factory: Callable[[], TextEnv], max_turns: int,
                 on_error: Literal["raise", "drop"] = "raise"):
        if on_error not in ("raise", "drop"):
            raise ValueError(f"on_error must be 'raise' or 'drop', got {on_error!r}")
        self.name, self.factory, self.max_turns, self.on_error = name, factory, max_turns, on_error
        self.envs: list[TextEnv] = []
        self.seeds: list[int] = []
        self.turns: list[int] = []
        self.done: list[bool] = []
        self.dropped: list[str | None] = []
        """Per episode: None, or why it was dropped (on_error: drop)."""

    def _fail(self, i: int, what: str) -> None:
        msg = f"text env '{self.name}' (episode seed {self.seeds[i]}, turn {self.turns[i]}): {what}"
        if self.on_error == "raise":
            raise TextEnvError(msg)
        self.dropped[i], self.done[i] = msg, True

    def reset(self, seeds: list[int]) -> list[str]:
        self.seeds, n = [int(s) for s in seeds], len(seeds)
        self.envs = [self.factory() for _ in range(n)]
        self.turns, self.done, self.dropped = [0] * n, [False] * n, [None] * n
        out = []
        for i, env in enumerate(self.envs):
            try:
                obs = env.reset(self.seeds[i])
            except Exception as e:
                self._fail(i, f"reset raised {type(e).__name__}: {e}")
                obs = ""
            if not self.done[i] and not isinstance(obs, str):
                self._fail(i, f"reset returned {type(obs).__name__}, expected str (the first observation)")
                obs = ""
            out.append(obs)
        return out

    def step(self, utterances: list[str | None]) -> tuple[list[str], list[float], list[bool], list[dict]]:
        if len(utterances) != len(self.envs):
            raise ValueError(f"TextEnvBatch.step: {len(utterances)} utterances for {len(self.envs)} episodes")
        obs, rewards, dones, infos = [], [], [], []
        for i, (env, u) in enumerate(zip(self.envs, utterances)):
            if self.done[i]:
                obs.append(""), rewards.append(0.0), dones.append(True), infos.append({})
                continue
            if u is None:
                raise ValueError(f"TextEnvBatch.step: no utterance for running episode {i} (seed {self.seeds[i]})")
            self.turns[i] += 1
            o, r, d, info = self._checked_step(i, env, u)
            if not self.done[i] and d is False and self.turns[i] >= self.max_turns:
                self._fail(i, f"still running after max_turns={self.max_turns} turns (an env must end its episodes)")
            if self.dropped[i] is not None:
                o, r, d, info = "", 0.0, True, {"dropped": self.dropped[i]}
            self.done[i] = self.done[i] or d
            obs.append(o), rewards.append(r), dones.append(self.done[i]), infos.append(info)
        return obs, rewards, dones, infos

    def _checked_step(self, i: int, env: TextEnv, u: str):
        try:
            out = env.step(u)
        except Exception as e:
            self._fail(i, f"step raised {type(e).__name__}: {e}")
            return "", 0.0, True, {}
        if not isinstance(out, tuple) or len(out) != 4:
            got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
            self._fail(i, f"step returned {got}, expected (observation: str, reward: float, done: bool, info: dict)")
            return "", 0.0, True, {}
        o, r, d, info = out
        problems = []
        if not isinstance(o, str):
            problems.append(f"observation is {type(o).__name__}, expected str")
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
            problems.append(f"reward is {r!r}, expected a finite number")
        if not isinstance(d, bool):
            problems.append(f"done is {type(d).__name__}, expected bool")
        if not isinstance(info, dict):
            problems.append(f"info is {type(info).__name__}, expected dict")
        if problems:
            self._fail(i, "step returned a bad value: " + "; ".join(problems))
            return "", 0.0, True, {}
        return o, float(r), d, info

    def abandon(self, i: int) -> None:
        """End episode `i` from the agent's side (e.g. its context is full): later steps skip it."""
        self.done[i] = True

    @property
    def n_dropped(self) -> int:
        return sum(d is not None for d in self.dropped)
