"""Training the experts (and the dense baseline) concurrently: each is an ordinary `grpo` run in its own run
directory, launched by `rl.cli.launch` inside a Ray task that reserves `parallel.cpus_per_expert` CPUs.

A run is finished when its directory holds summary.json; a run with a complete checkpoint is continued from it
(`rl train --resume` semantics); otherwise it starts fresh. So a BTM resume, or Ray's rerun of a task whose process
died (`parallel.expert_retries`), continues exactly the unfinished runs from their own last checkpoints and never
touches the finished ones. At most `parallel.experts_in_parallel` runs are in flight at once; the driver prints one
progress line per run whenever its step advances.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from rl.errors import OrchardError

log = logging.getLogger("orchard")


@dataclass(frozen=True)
class ExpertRun:
    label: str
    """`add`, `sub`, ... or `dense`."""
    config: Path
    """Its GRPO recipe (written by the BTM job), `<run_dir>/expert.yaml`."""
    run_dir: Path
    max_steps: int


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "summary.json").is_file()


def run_one(config: str, run_dir: str, threads: int) -> dict:
    """Run (fresh or resumed) one GRPO run to its end; its stdout and log go to `<run_dir>/train.log`."""
    import torch

    from rl.cli import launch
    from rl.rundir import RunDir

    torch.set_num_threads(max(1, threads))
    run_dir_p = Path(run_dir)
    if is_finished(run_dir_p):
        return json.loads((run_dir_p / "summary.json").read_text())
    resume = RunDir(run_dir_p).latest_checkpoint() is not None
    with open(run_dir_p / "train.log", "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        if resume:
            return launch(None, [], resume=str(run_dir_p))
        return launch(config, [f"run_dir={run_dir_p}"])


def _progress(run: ExpertRun) -> tuple[int, float | None]:
    """(last logged step, its reward/mean) from the run's metrics.jsonl."""
    p = run.run_dir / "metrics.jsonl"
    if not p.is_file():
        return 0, None
    step, reward = 0, None
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        step = max(step, row.get("step", 0))
        reward = row.get("reward/mean", reward)
    return step, reward


def train_all(runs: list[ExpertRun], parallel, on_done=None) -> dict[str, dict]:
    """Every run of `runs` to its end, at most `parallel.experts_in_parallel` at a time as Ray tasks; returns each
    run's summary by label. `on_done(label, summary)` is called as each finishes (the BTM job checkpoints there).
    A run that fails does not stop the others; after all have ended, an OrchardError names the failed ones."""
    from rl.cluster import ClusterConfig, init_ray

    todo = [r for r in runs if not is_finished(r.run_dir)]
    done = {r.label: json.loads((r.run_dir / "summary.json").read_text()) for r in runs if is_finished(r.run_dir)}
    for label in done:
        print(f"btm | {label:8s} finished earlier (kept)", flush=True)
    if not todo:
        return done
    import ray

    p = parallel
    started = init_ray(ClusterConfig(backend="ray", address=p.address, rollout_workers=p.experts_in_parallel,
                                     cpus_per_worker=p.cpus_per_expert))
    threads = max(1, round(p.cpus_per_expert))
    # max_calls=1: every run in a fresh worker process (no state, imports or memory carried from one run to the next)
    task = ray.remote(max_calls=1)(run_one).options(num_cpus=p.cpus_per_expert, num_gpus=p.gpus_per_expert,
                                                    max_retries=p.expert_retries, retry_exceptions=False)
    failed: dict[str, str] = {}
    t0 = time.time()
    try:
        pending, inflight, shown = list(todo), {}, {}
        while pending or inflight:
            while pending and len(inflight) < p.experts_in_parallel:
                r = pending.pop(0)
                r.run_dir.mkdir(parents=True, exist_ok=True)
                inflight[task.remote(str(r.config), str(r.run_dir), threads)] = r
                print(f"btm | {r.label:8s} started ({'resumed' if (r.run_dir / 'checkpoints').exists() else 'fresh'})",
                      flush=True)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=2.0)
            for ref in ready:
                r = inflight.pop(ref)
                try:
                    done[r.label] = ray.get(ref)
                    acc = done[r.label].get("eval/accuracy_after")
                    print(f"btm | {r.label:8s} done  {r.max_steps}/{r.max_steps} steps, held-out "
                          f"{done[r.label].get('eval/accuracy_before', float('nan')):.3f} -> {acc:.3f} "
                          f"({time.time() - t0:.0f} s)", flush=True)
                    if on_done is not None:
                        on_done(r.label, done[r.label])
                except Exception as e:  # noqa: BLE001 - reported below, naming the run; the others continue
                    failed[r.label] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
                    print(f"btm | {r.label:8s} FAILED: {failed[r.label]}", flush=True)
            for r in inflight.values():
                step, reward = _progress(r)
                if step and shown.get(r.label) != step:
                    shown[r.label] = step
                    rw = f" reward {reward:.3f}" if reward is not None else ""
                    print(f"btm | {r.label:8s} step {step}/{r.max_steps}{rw}", flush=True)
    finally:
        if started:
            ray.shutdown()
    if failed:
        raise OrchardError("expert runs failed: " + "; ".join(f"{k} ({v}; log: {next(r.run_dir for r in runs if r.label == k)}"
                                                             f"/train.log)" for k, v in failed.items())
                           + ". Finished experts are kept: fix the cause and `rl train --resume` the BTM run")
    return done


def run_sequentially(runs: list[ExpertRun], threads: int) -> dict[str, dict]:
    """The same runs one after another in this process (the parallel-efficiency baseline of `rl bench btm`)."""
    return {r.label: run_one(str(r.config), str(r.run_dir), threads) for r in runs}

