"""Rollout workers: one engine each, in the controller's process (`local`) or as Ray actors (`ray`), behind one pool.

A worker only generates, loads weights and scores; it knows nothing of rewards, groups or staleness (the
controller, `rollout/controller.py`, does that). Calls return handles; `WorkerPool.wait` returns the finished
ones and `WorkerPool.result` their value, raising `WorkerDied` when the worker's process is gone (killed,
crashed, out of memory), so the controller can restart it and re-queue its work.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import torch

from rollout.types import SamplingParams


class WorkerDied(Exception):
    def __init__(self, index: int, cause: BaseException):
        super().__init__(f"rollout worker {index} died: {type(cause).__name__}: {cause}")
        self.index, self.cause = index, cause


class RolloutWorker:
    """Holds one engine. Constructed in-process or as a Ray actor (`ray.remote(RolloutWorker)`)."""

    def __init__(self, index: int, kind: str, model_path: str, engine_opts: dict, pin_core: int | None = None,
                 threads: int | None = None):
        from rl.cluster import pin_to_core

        self.index = index
        self.core = pin_to_core(pin_core, threads or 1) if pin_core is not None else None
        if pin_core is None and threads:
            torch.set_num_threads(threads)
        from rollout.engine import make_engine

        self.engine = make_engine(kind, model_path, **engine_opts)

    def info(self) -> dict:
        return {"index": self.index, "pid": os.getpid(), "host": socket.gethostname(), "core": self.core,
                "version": self.engine.version, "threads": torch.get_num_threads(),
                "device": str(getattr(self.engine, "device", "cpu"))}

    def generate(self, task_id: int, prompt_ids: list[list[int]], sampling: SamplingParams) -> dict:
        t0 = time.perf_counter()
        samples = self.engine.generate(prompt_ids, sampling)
        return {"task_id": task_id, "samples": samples, "gen_s": time.perf_counter() - t0,
                "version": self.engine.version, "worker": self.index}

    def update_weights(self, weights: dict[str, torch.Tensor], version: int) -> float:
        t0 = time.perf_counter()
        self.engine.update_weights(weights.items(), version=version)
        return time.perf_counter() - t0

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], temperature: float) -> dict:
        return {"logprobs": self.engine.score(prompt_ids, completion_ids, temperature), "version": self.engine.version}

    def close(self) -> None:
        self.engine.close()


@dataclass(eq=False)  # hashable by identity, like Ray's ObjectRefs
class _Call:
    """An in-process call. The local backend runs calls in order when someone waits, as an actor would work
    through its queue, so time spent generating shows up where the controller waits for it."""

    fn: Any
    args: tuple
    done: bool = False
    value: Any = None
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self.fn(*self.args)
        except Exception as e:  # surfaced by `result`, as Ray would
            self.error = e
        self.done = True


class WorkerPool:
    """N rollout workers reached the same way whether they are Ray actors or one in-process object."""

    def __init__(self, backend: str, n: int, worker_args: dict, *, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, pin_cpus: bool = False, env_vars: dict | None = None,
                 first_core: int = 1):
        if backend == "local" and n != 1:
            raise ValueError(f"cluster.rollout_workers={n}: the local backend runs exactly one worker in process "
                             f"(use cluster.backend=ray for more)")
        self.backend, self.n, self.args = backend, n, worker_args
        self.cpus, self.gpus, self.pin = cpus_per_worker, gpus_per_worker, pin_cpus
        self.env_vars, self.first_core = env_vars or {}, first_core
        self.workers: list[Any] = [None] * n
        self._queue: list[_Call] = []  # local backend: calls not yet run, in order
        self.restarts = [0] * n
        for i in range(n):
            self.start(i)

    def _kwargs(self, i: int) -> dict:
        threads = max(1, int(round(self.cpus)))
        return {**self.args, "index": i, "pin_core": (self.first_core + i) if self.pin else None, "threads": threads}

    def start(self, i: int) -> None:
        if self.backend == "local":
            self.workers[i] = RolloutWorker(**{**self._kwargs(i), "pin_core": None, "threads": None})
            return
        import ray

        actor = ray.remote(RolloutWorker).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0, max_concurrency=1,
            runtime_env={"env_vars": self.env_vars} if self.env_vars else None)
        self.workers[i] = actor.remote(**self._kwargs(i))

    def restart(self, i: int) -> None:
        if self.backend == "ray":
            import ray

            try:
                ray.kill(self.workers[i], no_restart=True)
            except Exception:  # already gone
                pass
        self.restarts[i] += 1
        self.start(i)

    def call(self, i: int, method: str, *args) -> Any:
        if self.backend == "local":
            call = _Call(getattr(self.workers[i], method), args)
            self._queue.append(call)
            return call
        return getattr(self.workers[i], method).remote(*args)

    def put(self, value: Any) -> Any:
        """Share one value with every worker (Ray object store: serialised once; an ObjectRef is shared as is)."""
        if self.backend == "local":
            return value
        import ray

        return value if isinstance(value, ray.ObjectRef) else ray.put(value)

    def wait(self, handles: list, timeout: float | None = None) -> list:
        """The finished handles among `handles` (at least one unless `timeout` passes)."""
        if not handles:
            return []
        if self.backend == "local":
            self._run_queued()
            return [h for h in handles if h.done]
        import ray

        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        if ready:  # take everything else that is already done too
            more, _ = ray.wait([h for h in handles if h not in ready], num_returns=len(handles) - len(ready), timeout=0)
            ready += more
        return ready

    def result(self, handle: Any, index: int) -> Any:
        """The call's value; raises WorkerDied if the worker's process is gone, else the call's own exception."""
        if self.backend == "local":
            self._run_queued()
            if handle.error is not None:
                raise handle.error
            return handle.value
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        try:
            return ray.get(handle)
        except (RayActorError, ActorUnavailableError) as e:
            raise WorkerDied(index, e) from e

    def get(self, handle: Any, index: int) -> Any:
        """Block for one call's value."""
        if self.backend == "ray":
            import ray

            ray.wait([handle], num_returns=1)
        return self.result(handle, index)

    def _run_queued(self) -> None:
        while self._queue:
            self._queue.pop(0).run()

    def close(self) -> None:
        self._queue.clear()
        for i, w in enumerate(self.workers):
            if w is None:
                continue
            if self.backend == "local":
                w.close()
            else:
                import ray

                try:
                    ray.get(w.close.remote(), timeout=30)
                except Exception:
                    pass
                ray.kill(w, no_restart=True)
            self.workers[i] = None
