"""The scaffolding every training job shares, as plain functions a job calls in order (no base class):

    job = start(run, cfg.seed, cfg.torch_threads)          # seed; find the latest complete checkpoint
    ...build the policy, optimizer, data (they may draw from the seeded RNGs)...
    state = job.load_state("state.pt")                     # {} on a fresh start; else the loop state, RNG restored
    before = evaluate_before(run, state.get("eval_before"), lambda: evaluate(...), "eval/return", cfg.log.tensorboard)
    tracker = make_tracker(run, cfg.log, total, job.step, show={...}, desc="ppo")
    for step in range(job.step + 1, total + 1):
        ...
        tracker.log(step, metrics)
        checkpoint(run, step, total, cfg.checkpoint,
                   lambda d: write_state(d / "state.pt", {..., "eval_before": before}))
    tracker.close()
    return summarize(job, {"algo": "ppo", ...}, "eval/return", before, after)

What stays in the job: which modules a checkpoint holds and how they are restored, the evaluation itself, the
metrics, and anything else particular to the algorithm. The run directory's layout and its atomic checkpoints are
`rl/rundir.py`'s.

This is rl core: it imports neither `trainers/` nor `envs/`, and torch only inside the functions that need it (the
JAX jobs never load torch through it).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rl.config import CheckpointConfig, LogConfig
from rl.errors import OrchardError
from rl.progress import Tracker
from rl.rundir import RunDir

log = logging.getLogger("orchard")


@dataclass(frozen=True)
class Start:
    """Where a job starts: fresh (`step` 0, `path` None) or after the run's latest complete checkpoint."""

    run: RunDir
    t0: float
    """Wall-clock time the job started (`summarize` reports the wall time since)."""
    step: int = 0
    """The last step (iteration, update) the checkpoint completed; the loop continues at step + 1."""
    path: Path | None = None
    """The checkpoint directory (`checkpoints/step-N`) resumed from."""

    @property
    def resumed(self) -> bool:
        return self.path is not None

    def load_state(self, name: str) -> dict:
        """The loop state saved in file `name` of the checkpoint, and drop the metrics logged after it (they are
        logged again). A `.json` file is read as JSON (the JAX jobs keep their RNG keys in their own state); any
        other file is a torch state written by `write_state`, whose python/numpy/torch RNG state is restored here.
        On a fresh start: {} (nothing is restored)."""
        if self.path is None:
            return {}
        file = self.path / name
        if not file.is_file():
            raise OrchardError(f"checkpoint {self.path} has no {name}: it was not written by this job "
                               f"(run_dir {self.run.path} belongs to another job or an older version of it)")
        if file.suffix == ".json":
            state = json.loads(file.read_text())
        else:
            import torch

            from rl.seeding import set_rng_state

            state = torch.load(file, weights_only=False)
            set_rng_state(state["rng"])
        self.run.truncate_metrics(self.step)
        return state


def start(run: RunDir, seed: int | None, torch_threads: int = 0) -> Start:
    """Start or resume: seed python, numpy and torch with `seed` (None: the job seeds its own generators, e.g. JAX
    keys), set torch's intra-op threads (0: torch's default), and find the run's latest complete checkpoint.
    Nothing is restored yet: build the job's modules first (from the seeded RNGs, as a fresh run does), then call
    `Start.load_state`."""
    t0 = time.time()
    if seed is not None:
        from rl.seeding import seed_everything

        seed_everything(seed)
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    latest = run.latest_checkpoint()
    if latest is None:
        return Start(run, t0)
    log.info(f"resumed from {latest[1]} at step {latest[0]}")
    return Start(run, t0, latest[0], latest[1])


def write_state(path: Path, state: dict) -> None:
    """Save a job's loop state with torch, adding the python/numpy/torch RNG state under "rng" (which
    `Start.load_state` restores)."""
    import torch

    from rl.seeding import rng_state

    torch.save({**state, "rng": rng_state()}, path)


def evaluate_before(run: RunDir, stored: Any, evaluate: Callable[[], Any], metrics: str | Callable[[Any], dict],
                    tensorboard: bool = True) -> Any:
    """The evaluation before training, done once per run: `stored` (the value a resumed run's checkpoint kept) if it
    is not None, else `evaluate()` now, logged as the metrics of step 0: `{metrics: value}` when `metrics` is a key,
    `metrics(value)` when it is a function. Store the returned value in every checkpoint."""
    if stored is not None:
        return stored
    value = evaluate()
    row = {metrics: value} if isinstance(metrics, str) else metrics(value)
    run.log_metrics(0, row, tensorboard=tensorboard)
    return value


def make_tracker(run: RunDir, cfg: LogConfig, total: int, start_step: int, show: dict[str, str], desc: str,
                 every: int | None = None) -> Tracker:
    """The progress bar and metric logger of a job of `total` steps starting after `start_step`, configured by the
    job's `log` section (`every` overrides `log.every`: jobs that log once per segment log every segment)."""
    return Tracker(run, total, start_step, show=show, progress=cfg.progress, tensorboard=cfg.tensorboard,
                   every=cfg.every if every is None else every, desc=desc)


def checkpoint_due(step: int, last_step: int, every: int, prev: int | None = None) -> bool:
    """Is a checkpoint due after `step`? At the last step, and whenever a multiple of `every` lies in (prev, step]
    (`prev`: the step of the previous call, default step - 1; jobs that advance several steps per call pass it).
    `every` 0: only at the last step."""
    prev = step - 1 if prev is None else prev
    return step == last_step or (every > 0 and step // every > prev // every)


def checkpoint(run: RunDir, step: int, last_step: int, cfg: CheckpointConfig, write: Callable[[Path], None],
               prev: int | None = None, force: bool = False) -> bool:
    """Checkpoint every N: if `force` or `checkpoint_due(step, last_step, cfg.every, prev)`, `write(dir)` fills a
    temp directory that becomes `checkpoints/step-<step>` atomically (rl/rundir.py), and all but the newest
    `cfg.keep` checkpoints are deleted. Returns whether it saved."""
    if not (force or checkpoint_due(step, last_step, cfg.every, prev)):
        return False
    with run.checkpoint_writer(step, keep=cfg.keep) as d:
        write(d)
    return True


def summarize(job: Start, fields: dict, metric: str, before: float, after: float,
              names: tuple[str, str] = ("before", "after")) -> dict:
    """The summary a job returns (`rl train` writes it as summary.json): the job's own `fields` first, then
    `<metric>_<names[0]>`, `<metric>_<names[1]>` and `<metric>_gain` (after - before), `wall_time_s` since `start`,
    and `final_checkpoint` (the run's latest complete checkpoint, or None)."""
    latest = job.run.latest_checkpoint()
    return {**fields, f"{metric}_{names[0]}": before, f"{metric}_{names[1]}": after,
            f"{metric}_gain": after - before, "wall_time_s": time.time() - job.t0,
            "final_checkpoint": str(latest[1]) if latest else None}
