"""Run a command in a child process and rerun it if it stalls: no CPU progress for `stall_s` seconds.

Why: XLA:CPU deadlocked inside jitted calls, the process waiting forever with every thread idle: jaxlib 0.10.x's
batched LAPACK kernels starve its thread pool (rl/_xla.py has the stacks, the measurements and the fix: jaxlib
0.9.2 pinned, our MARL init without batched QRs). A healthy run never needs a rerun now; the JAX benchmarks (and
the JAX tests, through tests/conftest.py) still run in watched children as a safety net. The watchdog looks at CPU
progress, not wall time: a slow but working child (~1 CPU-second per second) is never killed, a deadlocked one
(a few ms per second of idle wake-ups) is killed after `stall_s`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import psutil


WATCHED = "ORCHARD_WATCHED"  # set in every watched child


class StalledError(RuntimeError):
    pass


@dataclass
class Watched:
    returncode: int
    output: str
    stalls: int  # attempts killed as stalled before this one


def _cpu_s(pid: int) -> float:
    try:
        p = psutil.Process(pid)
        return sum(sum(c.cpu_times()[:2]) for c in [p, *p.children(recursive=True)])  # user + system
    except psutil.Error:
        return 0.0


def rl_train_attempts(run_dir, args: list[str]) -> Callable[[int], list[str]]:
    """`cmd` for `run_watched` of an `rl train ARGS` job writing to `run_dir`: after a stall, `rl train --resume
    RUN_DIR` from its last complete checkpoint (its config.yaml holds every override), or ARGS again if it had none
    (a fresh launch clears what the stalled attempt left)."""
    from pathlib import Path

    run_dir, base = Path(run_dir), [sys.executable, "-m", "rl.cli", "train"]

    def cmd(attempt: int) -> list[str]:
        if attempt and any((run_dir / "checkpoints").glob("step-*/COMPLETE")):
            return [*base, "--resume", str(run_dir)]
        return [*base, *args]

    return cmd


def run_watched(cmd: list[str] | Callable[[int], list[str]], *, label: str, stall_s: float = 60.0, retries: int = 2,
                env: dict | None = None, cwd: str | None = None, echo: bool = False) -> Watched:
    """Run `cmd`; if it stalls, kill it and run it again, at most `retries` more times (`cmd` may be a function of
    the attempt number, e.g. to resume from a checkpoint). Returns its exit code and output (stdout and stderr
    together; not captured but shown as it comes when `echo`). Raises StalledError if every attempt stalled."""
    env = {**(os.environ if env is None else env), WATCHED: "1"}  # an `rl train` in the child does not re-watch itself
    for attempt in range(retries + 1):
        with tempfile.TemporaryFile("w+") as log:
            proc = subprocess.Popen(cmd(attempt) if callable(cmd) else cmd, stdout=None if echo else log,
                                    stderr=None if echo else subprocess.STDOUT, env=env, cwd=cwd)
            last_cpu, last_change, stalled = -1.0, time.monotonic(), False
            while proc.poll() is None:
                time.sleep(1.0)
                cpu = _cpu_s(proc.pid)
                if cpu > last_cpu + 0.5:
                    last_cpu, last_change = cpu, time.monotonic()
                elif time.monotonic() - last_change > stall_s:
                    for child in psutil.Process(proc.pid).children(recursive=True):
                        child.kill()
                    proc.kill()
                    proc.wait()
                    stalled = True
                    print(f"{label}: no CPU progress for {stall_s:g} s (XLA deadlock?), killed; attempt {attempt + 1} "
                          f"of {retries + 1}", file=sys.stderr, flush=True)
                    break
            log.seek(0)
            output = log.read()
            if not stalled:
                return Watched(proc.returncode, output, attempt)
    raise StalledError(f"{label}: stalled {retries + 1} times (no CPU progress for {stall_s:g} s each time)")
