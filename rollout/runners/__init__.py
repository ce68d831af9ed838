"""Rollout runners: how a worker turns a task into trajectories (`base.py`: protocol and `RUNNERS`).

Registered: `single_turn` (`single_turn.py`) and `chunked` (`chunked.py`, partial rollouts). A new runner (a
multi-turn agent over a text env, a denoising sampler) is a new module here registering itself in `RUNNERS`.
"""
from rollout.runners import chunked, multi_turn, single_turn  # noqa: F401  (register the built-in runners)
from rollout.runners.base import RUNNERS, Between, Runner

__all__ = ["RUNNERS", "Between", "Runner"]
