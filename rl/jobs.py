"""What a job is: a config class plus a `run` function. Registered by name in `rl.config.JOBS`; `run` builds its
start/resume, evaluation before training, checkpoints, progress and summary from `rl/jobkit.py`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rl.config import JobConfig
from rl.rundir import RunDir


@dataclass(frozen=True)
class Job:
    name: str
    config_cls: type[JobConfig]
    run: Callable[[JobConfig, RunDir], dict]
    """run(cfg, run_dir) trains (resuming from run_dir's latest checkpoint if it has one) and returns the summary."""
    description: str = ""
    watch_stalls: bool = False
    """`rl train` runs the job in a child process and restarts it from its last checkpoint when it stops making CPU
    progress (the XLA:CPU deadlock of the JAX jobs; see rl/watchdog.py)."""
    evaluate: Callable[[JobConfig, Path | None], dict] | None = None
    """evaluate(cfg, checkpoint) -> the held-out evaluation `rl eval` prints: of the policy in `checkpoint` (a run's
    `checkpoints/step-N`), or with None of the model the config names (jobs that train a given model). None: the job
    has no `rl eval`."""
