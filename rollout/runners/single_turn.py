"""`single_turn`: one engine call per task, G completions of each prompt (GRPO's group), one step each."""
from __future__ import annotations

from dataclasses import dataclass

from rollout.runners.base import RUNNERS, Between
from rollout.types import RolloutTask, Step, Trajectory


@RUNNERS.register("single_turn")
@dataclass(frozen=True)
class SingleTurnRunner:
    """Each prompt repeated `group_size` times in one `engine.generate` call, generated to the end with one
    policy version."""

    mid_task_weights = False

    @classmethod
    def from_config(cls, rollout) -> "SingleTurnRunner":
        return cls()

    def run(self, engine, task: RolloutTask, between: Between) -> list[Trajectory]:
        prompts = [p for p in task.prompts for _ in range(task.group_size)]
        return [Trajectory([Step.from_sample(s)]) for s in engine.generate(prompts, task.sampling)]
