"""The rollout runner protocol and its registry.

A runner turns one `RolloutTask` into trajectories (`task.group_size` per prompt, prompt-contiguous) using the
worker's engine. It runs on the worker, next to the engine; the controller never looks inside it. Runners are
registered by name in `RUNNERS` (values: runner classes) and chosen by `rollout.runner` in a job config; each
class builds itself from that config section (`from_config`) and is sent, as an object, to every worker.
"""
from __future__ import annotations

from typing import Callable, Protocol

from rl.registry import Registry
from rollout.types import RolloutTask, Trajectory

Between = Callable[[int], None]
"""`between(k)`: called by a runner before its engine call k >= 1 of a task; the worker loads the newest weights it
has been offered there (so later tokens may carry a newer policy version)."""


class Runner(Protocol):
    mid_task_weights: bool
    """True if the runner makes several engine calls per task and calls `between` before each but the first: the
    pool then gives Ray workers a weights thread and the controller offers new weights to busy workers."""

    def run(self, engine, task: RolloutTask, between: Between) -> list[Trajectory]:
        """len(task.prompts) x task.group_size trajectories, prompt-contiguous, every token tagged with the policy
        version that produced it (the engine does that)."""


RUNNERS: Registry[type] = Registry("rollout runner")
