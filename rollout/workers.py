"""Rollout workers: one engine and one runner each, in the controller's process (`local`) or as Ray actors (`ray`),
behind one pool (`WorkerPool`, over a `LocalBackend` or a `RayBackend`).

A worker only runs tasks (its runner, `rollout/runners/`, turns a task into trajectories with the engine), loads
weights and scores; it knows nothing of rewards or staleness (the controller, `rollout/controller.py`, does that).
Calls return handles; `WorkerPool.wait` returns the finished ones and `WorkerPool.result` their value (a dataclass
of `rollout.types`, or seconds for the weight calls), raising `WorkerDied` when the worker's process is gone
(killed, crashed, out of memory), so the controller can restart it and re-queue its work.

Partial rollouts (a runner with `mid_task_weights`, e.g. `chunked`): a runner makes several engine calls per task
and, between them, the worker loads the newest weights it has been offered, so later tokens carry the newer
policy version. Weights reach a busy worker because its Ray actor has a second thread, the `weights` concurrency
group, that only runs `offer_weights`: it fetches the tensors and stores them as the one pending (weights,
version), newest wins. Every other call (run, generate, update_weights, check, score, info) runs on the engine's
own thread, one at a time in submission order, exactly as in a plain actor, and only that thread touches the
engine:

- ordered: the engine's version only grows. Pending weights are replaced only by a strictly newer version (an
  older or repeated offer that arrives late is dropped) and are loaded only when newer than the engine's; a
  pending update is never lost, only overtaken by a newer one, which is then loaded instead.
- `update_weights(v)`, in the call order, still guarantees what it always did: every call submitted after it
  sees version >= v (the controller's pacing relies on it: a task dispatched at v has no token older than v).
- the weight-sync probe: when a version arrives with a probe batch, the worker scores the probe right after
  loading that version (between engine calls if it loads mid-task), and `check(v)` returns those log-probs, so
  the check of v compares v's own weights with the trainer's v, even if the worker has moved on to a newer
  version since. A version the worker never loaded (overtaken while pending) is reported as skipped: no token
  came from it.

Broadcast weight sync (`cluster.weight_sync: broadcast`, `rollout/weight_sync.py`) uses the same thread: `join_sync`
joins a generation of the sync group and `receive_weights` takes part in one broadcast, whose tensors become the
pending update exactly as an offer's do; the ordered `update_weights(None, v)` then waits for version v to have
arrived and loads the newest received (v or newer).

The local backend runs calls in order in the controller's process, so no weights can arrive mid-task there: a
chunked task is generated in chunks with one version.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from rollout.adapters import AdapterDir, AdapterWeights
from rollout.engine import EngineSpec
from rollout.runners import Runner
from rollout.types import CheckResult, GenResult, RolloutTask, Sample, SamplingParams, ScoreResult, WorkerInfo

WEIGHTS_GROUP = "weights"  # the Ray concurrency group (one thread) that receives weights while the engine works
_GROUP_METHODS = {"offer_weights": WEIGHTS_GROUP, "join_sync": WEIGHTS_GROUP, "receive_weights": WEIGHTS_GROUP}


class WorkerDied(Exception):
    def __init__(self, index: int, cause: BaseException):
        super().__init__(f"rollout worker {index} died: {type(cause).__name__}: {cause}")
        self.index, self.cause = index, cause


def _fetch(weights) -> dict[str, torch.Tensor]:
    """Weights as sent: a dict, or a one-element list holding a dict or a Ray object reference (boxed, so that Ray
    passes the reference instead of fetching the tensors before the call starts)."""
    if isinstance(weights, list):
        (weights,) = weights
    if not isinstance(weights, (dict, AdapterWeights)):
        import ray

        weights = ray.get(weights)
    return weights


class RolloutWorker:
    """Holds one engine. Constructed in-process or as a Ray actor (`ray.remote(RolloutWorker)`)."""

    def __init__(self, index: int, engine: EngineSpec, runner: Runner, pin_core: int | None = None,
                 threads: int | None = None):
        from rl.cluster import place

        self.index = index
        self.core = place(pin_core, threads)
        self.engine = engine.build()
        self.runner = runner
        # Weights offered while the engine works (see the module docstring). `_lock` guards `_pending` and
        # `_newest`; everything else is touched only by the engine's thread.
        self._lock = threading.Lock()
        self._pending: tuple[int, dict, tuple | None] | None = None  # (version, weights, probe)
        self._newest = -1  # newest version received: loaded or pending
        self._loaded = -1  # version of the weights this worker last loaded (-1: the engine's own initial weights)
        self._probe_lps: dict[int, list[list[float]]] = {}  # version -> probe log-probs scored right after loading it
        self._load_s = 0.0
        self._arrived = threading.Condition(self._lock)  # notified when a broadcast version becomes pending
        self._sync = None  # the broadcast group (rollout.weight_sync.BroadcastGroup) with `cluster.weight_sync: broadcast`
        self._adapters: AdapterDir | None = None  # where shipped LoRA adapters are written for the engine to load

    def info(self) -> WorkerInfo:
        return WorkerInfo(index=self.index, pid=os.getpid(), host=socket.gethostname(), core=self.core,
                          version=self.engine.version, threads=torch.get_num_threads(),
                          device=str(getattr(self.engine, "device", "cpu")))

    def run(self, task: RolloutTask) -> GenResult:
        """The task through this worker's runner (which may load newer offered weights between engine calls)."""
        t0, self._load_s = time.perf_counter(), 0.0
        self._load_pending()
        trajectories = self.runner.run(self.engine, task, self._between_calls)
        return GenResult(task_id=task.task_id, trajectories=trajectories, gen_s=time.perf_counter() - t0,
                         load_s=self._load_s, version=self.engine.version, worker=self.index)

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> list[Sample]:
        """One plain engine call with the newest weights received (evaluation)."""
        self._load_pending()
        return self.engine.generate(prompt_ids, sampling)

    def _between_calls(self, k: int) -> None:
        """The runner's `between`: before its engine call k >= 1 of a task, load the newest offered weights."""
        self._load_pending()

    # --- weights -----------------------------------------------------------------------------------------------
    def offer_weights(self, weights, version: int, probe: tuple | None = None) -> float:
        """Runs on the `weights` thread, also while a generation is under way: fetch the tensors and make them the
        pending update, unless this version or a newer one was already received. Returns the seconds it took."""
        t0 = time.perf_counter()
        with self._lock:
            if version <= self._newest:
                return 0.0
        self._offer(version, _fetch(weights), probe)  # fetched outside the lock: the engine thread may load meanwhile
        return time.perf_counter() - t0

    def _offer(self, version: int, tensors: dict, probe: tuple | None) -> None:
        with self._lock:
            if version > self._newest:
                self._pending, self._newest = (version, tensors, probe), version
                self._arrived.notify_all()

    def join_sync(self, spec, rank: int) -> float:
        """Weights thread: leave the previous broadcast group (if any) and join `spec`'s generation as `rank`."""
        from rollout.weight_sync import BroadcastGroup

        t0 = time.perf_counter()
        old, self._sync = self._sync, None
        self._sync = BroadcastGroup.rejoin(old, spec, rank, getattr(self.engine, "device", None))  # NCCL: vLLM's GPU
        return time.perf_counter() - t0

    def receive_weights(self, version: int, probe: tuple | None = None) -> float:
        """Weights thread: take part in the broadcast of policy `version` and make it the pending update (dropped,
        after receiving, if this version or a newer one was already received). Returns the seconds it took."""
        if self._sync is None:
            raise RuntimeError(f"receive_weights({version}): rollout worker {self.index} has not joined a broadcast "
                               f"group (join_sync)")
        t0 = time.perf_counter()
        self._offer(version, self._sync.receive(to_host=True), probe)  # held until loaded: off the GPU meanwhile
        return time.perf_counter() - t0

    def update_weights(self, weights, version: int, probe: tuple | None = None) -> float:
        """In call order: afterwards the engine holds `version` or newer. Loads exactly `version` (from the pending
        offer if that is it) unless the engine already holds it or a newer one; a newer pending offer stays pending.
        `weights` None (broadcast sync): the tensors arrive on the weights thread (`receive_weights`); wait for
        `version` and load the newest received, which may be newer. `probe`: (prompt ids, completion ids) to score
        right after loading, for `check`. Returns load seconds."""
        self._load_s = 0.0
        if self._loaded >= version:
            return 0.0
        with self._lock:
            if weights is None:
                wait_s = 2 * self._sync.spec.timeout_s if self._sync is not None else 0.0
                if not self._arrived.wait_for(lambda: self._newest >= version, timeout=wait_s):
                    raise RuntimeError(f"rollout worker {self.index}: the broadcast of policy version {version} did "
                                       f"not arrive within {wait_s:g} s (2 x cluster.weight_sync_timeout_s)")
            p = self._pending
            if p is not None and (p[0] <= version or weights is None):
                self._pending = None  # this very version, or an older one this update overtakes (or, broadcast: newer)
            self._newest = max(self._newest, version)
        if weights is None:
            if p is not None and p[0] > self._loaded:
                self._load(*p)
            return self._load_s
        tensors = p[1] if p is not None and p[0] == version else _fetch(weights)
        self._load(version, tensors, probe)
        return self._load_s

    def _load_pending(self) -> None:
        with self._lock:
            p, self._pending = self._pending, None
        if p is not None and p[0] > self._loaded:
            self._load(*p)

    def _load(self, version: int, tensors: dict, probe: tuple | None) -> None:
        t0 = time.perf_counter()
        if isinstance(tensors, AdapterWeights):  # rollout.lora_sync=adapter: base weights + this adapter
            self._adapters = self._adapters or AdapterDir()
            self._adapters.load(self.engine, tensors, version)
        else:
            self.engine.update_weights(tensors.items(), version=version)
        self._loaded = version
        self._load_s += time.perf_counter() - t0
        if probe is not None:
            self._probe_lps[version] = self.engine.score(probe[0], probe[1], 1.0)

    def check(self, version: int) -> CheckResult:
        """The weight-sync probe's T=1 log-probs under policy `version`, scored right after that version was loaded
        (in call order, after `update_weights(version, probe=...)`). logprobs is None if this worker never loaded
        `version` (a newer one overtook it while pending): then no token of its came from that version."""
        for v in [v for v in self._probe_lps if v < version]:
            del self._probe_lps[v]
        lps = self._probe_lps.pop(version, None)
        if lps is None and self._loaded == version:
            raise RuntimeError(f"check({version}): version {version} was loaded without a probe batch")
        return CheckResult(version=version, logprobs=lps, holds=self.engine.version)

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], temperature: float) -> ScoreResult:
        self._load_pending()
        return ScoreResult(logprobs=self.engine.score(prompt_ids, completion_ids, temperature),
                           version=self.engine.version)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
        self.engine.close()
        if self._adapters is not None:
            self._adapters.close()


# --- backends ------------------------------------------------------------------------------------------------------
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


class LocalBackend:
    """One worker object in the controller's process; calls run in order, when someone waits for one. No call can
    run while another is under way, so weights never arrive mid-task."""

    name = "local"
    concurrent = False

    def __init__(self, n: int):
        if n != 1:
            raise ValueError(f"cluster.rollout_workers={n}: the local backend runs exactly one worker in process "
                             f"(use cluster.backend=ray for more)")
        self._queue: list[_Call] = []  # calls not yet run, in order

    def start(self, worker_cls: type, kwargs: dict, index: int) -> Any:
        return worker_cls(**{**kwargs, "pin_core": None, "threads": None})  # the controller's own process and threads

    def kill(self, worker: Any) -> None:
        """Nothing to kill in process: the restarted worker replaces the object."""

    def call(self, worker: Any, method: str, args: tuple) -> _Call:
        call = _Call(getattr(worker, method), args)
        self._queue.append(call)
        return call

    def put(self, value: Any) -> Any:
        return value

    def wait(self, handles: list, timeout: float | None) -> list:
        self._run_queued()
        return [h for h in handles if h.done]

    def result(self, handle: _Call, index: int) -> Any:
        self._run_queued()
        if handle.error is not None:
            raise handle.error
        return handle.value

    def get(self, handle: _Call, index: int) -> Any:
        return self.result(handle, index)

    def close_worker(self, worker: Any) -> None:
        self._queue.clear()
        worker.close()

    def _run_queued(self) -> None:
        while self._queue:
            self._queue.pop(0).run()


class RayBackend:
    """One Ray actor per worker (`max_restarts=0`: the pool restarts a dead one itself). With `weights_thread`, each
    actor gets the `weights` concurrency group, on which `_GROUP_METHODS` run while the engine works."""

    name = "ray"
    concurrent = True

    def __init__(self, n: int, *, cpus: float, gpus: float, env_vars: dict, weights_thread: bool):
        self.cpus, self.gpus, self.env_vars, self.weights_thread = cpus, gpus, env_vars, weights_thread

    def start(self, worker_cls: type, kwargs: dict, index: int) -> Any:
        import ray

        if self.weights_thread:
            # The default group keeps one thread and in-order execution: every call but the weights methods runs one
            # at a time in submission order, as in a plain actor; those (`_GROUP_METHODS`) get their own thread.
            cls = ray.remote(concurrency_groups={WEIGHTS_GROUP: 1})(worker_cls)
            extra = {"allow_out_of_order_execution": False}
        else:
            cls, extra = ray.remote(worker_cls), {}
        actor = cls.options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0, max_concurrency=1,
            runtime_env={"env_vars": self.env_vars} if self.env_vars else None, **extra)
        return actor.remote(**kwargs)

    def kill(self, worker: Any) -> None:
        import ray

        try:
            ray.kill(worker, no_restart=True)
        except Exception:  # already gone
            pass

    def call(self, worker: Any, method: str, args: tuple) -> Any:
        m = getattr(worker, method)
        if method in _GROUP_METHODS:
            m = m.options(concurrency_group=_GROUP_METHODS[method])
        return m.remote(*args)

    def put(self, value: Any) -> Any:
        import ray

        return value if isinstance(value, ray.ObjectRef) else ray.put(value)

    def wait(self, handles: list, timeout: float | None) -> list:
        import ray

        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        if ready:  # take everything else that is already done too
            more, _ = ray.wait([h for h in handles if h not in ready], num_returns=len(handles) - len(ready), timeout=0)
            ready += more
        return ready

    def result(self, handle: Any, index: int) -> Any:
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        try:
            return ray.get(handle)
        except (RayActorError, ActorUnavailableError) as e:
            raise WorkerDied(index, e) from e

    def get(self, handle: Any, index: int) -> Any:
        import ray

        ray.wait([handle], num_returns=1)
        return self.result(handle, index)

    def close_worker(self, worker: Any) -> None:
        import ray

        try:
            ray.get(worker.close.remote(), timeout=30)
        except Exception:  # it may be dead already; it is killed next either way
            pass
        ray.kill(worker, no_restart=True)


class WorkerPool:
    """N rollout workers reached the same way whether they are Ray actors or one in-process object."""

    def __init__(self, backend: str, n: int, engine: EngineSpec, runner: Runner, *, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, pin_cpus: bool = False, env_vars: dict | None = None,
                 first_core: int = 1, weights_thread: bool = False, worker_cls: type = RolloutWorker,
                 threads: int | None = None):
        """backend: `local` (one worker in process) or `ray` (`cluster.backend`).
        runner: what every worker runs tasks with; one with `mid_task_weights` gives each Ray actor a `weights`
        thread, so that weights offered mid-task are loaded between its engine calls.
        weights_thread: give each Ray actor that thread anyway (broadcast weight sync receives on it).
        first_core: with `pin_cpus`, worker i is pinned to core first_core + i (the trainer ranks come first).
        threads: torch threads of each Ray actor (default: cpus_per_worker, rounded, at least 1)."""
        self.n, self.engine, self.runner, self.worker_cls = n, engine, runner, worker_cls
        self.weights_thread = runner.mid_task_weights or weights_thread
        if backend == "local":
            self.backend: LocalBackend | RayBackend = LocalBackend(n)
        elif backend == "ray":
            self.backend = RayBackend(n, cpus=cpus_per_worker, gpus=gpus_per_worker, env_vars=env_vars or {},
                                      weights_thread=self.weights_thread)
        else:
            raise ValueError(f"cluster.backend: unknown backend '{backend}' (local or ray)")
        self.pin, self.first_core = pin_cpus, first_core
        self.threads = threads or max(1, int(round(cpus_per_worker)))
        self.workers: list[Any] = [None] * n
        self.restarts = [0] * n
        for i in range(n):
            self.start(i)

    def start(self, i: int) -> None:
        kwargs = {"index": i, "engine": self.engine, "runner": self.runner,
                  "pin_core": (self.first_core + i) if self.pin else None, "threads": self.threads}
        self.workers[i] = self.backend.start(self.worker_cls, kwargs, i)

    def restart(self, i: int) -> None:
        self.backend.kill(self.workers[i])
        self.restarts[i] += 1
        self.start(i)

    def call(self, i: int, method: str, *args) -> Any:
        """Call worker i's `method`; returns a handle for `wait` / `result` / `get`."""
        return self.backend.call(self.workers[i], method, args)

    def put(self, value: Any) -> Any:
        """Share one value with every worker (Ray object store: serialised once; an ObjectRef is shared as is)."""
        return self.backend.put(value)

    def wait(self, handles: list, timeout: float | None = None) -> list:
        """The finished handles among `handles` (at least one unless `timeout` passes)."""
        return self.backend.wait(handles, timeout) if handles else []

    def result(self, handle: Any, index: int) -> Any:
        """The call's value; raises WorkerDied if the worker's process is gone, else the call's own exception."""
        return self.backend.result(handle, index)

    def get(self, handle: Any, index: int) -> Any:
        """Block for one call's value."""
        return self.backend.get(handle, index)

    def close(self) -> None:
        for i, w in enumerate(self.workers):
            if w is not None:
                self.backend.close_worker(w)
                self.workers[i] = None
