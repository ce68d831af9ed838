"""Live progress bar (rich) plus metric logging to the run directory.

`Tracker.log(step, metrics)` writes `metrics.jsonl` and TensorBoard and refreshes the bar, which shows the step,
ETA and the few metrics named in `show` (e.g. reward, accuracy, tokens/s).
"""
from __future__ import annotations

import logging
import sys

from rl.rundir import RunDir

log = logging.getLogger("orchard")


def setup_logging(level: int = logging.INFO) -> None:
    if logging.getLogger().handlers:
        return
    from rich.logging import RichHandler

    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)])
    for noisy in ("vllm", "ray", "jax", "absl", "transformers", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Tracker:
    def __init__(self, run: RunDir, total_steps: int, start_step: int = 0, show: dict[str, str] | None = None,
                 progress: bool = True, tensorboard: bool = True, every: int = 1, desc: str = "train"):
        self.run = run
        self.total = total_steps
        self.show = show or {}
        self.tensorboard = tensorboard
        self.every = max(1, every)
        self._bar = None
        if progress and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 transient=False)
            self._task = self._bar.add_task(desc, total=total_steps, completed=start_step, info="")
            self._bar.start()

    def log(self, step: int, metrics: dict, force: bool = False) -> None:
        """Record metrics for `step` (1-based: the number of updates done)."""
        if force or step % self.every == 0 or step == self.total:
            self.run.log_metrics(step, metrics, tensorboard=self.tensorboard)
        info = "  ".join(f"{label}={metrics[k]:.4g}" for k, label in self.show.items()
                         if isinstance(metrics.get(k), (int, float)))
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif step % max(1, self.total // 20) == 0 or step == self.total:
            log.info(f"step {step}/{self.total}  {info}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self.run.close()
