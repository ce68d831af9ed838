"""Rollout workers: one engine each, in the controller's process (`local`) or as Ray actors (`ray`), behind one pool.

A worker only generates, loads weights and scores; it knows nothing of rewards, groups or staleness (the
controller, `rollout/controller.py`, does that). Calls return handles; `WorkerPool.wait` returns the finished
ones and `WorkerPool.result` their value, raising `WorkerDied` when the worker's process is gone (killed,
crashed, out of memory), so the controller can restart it and re-queue its work.

Partial rollouts (`partial_chunk_tokens`): a worker generates a task in chunks of that many new tokens
(`generate_in_chunks`: unfinished samples continue from prompt + completion so far) and, between chunks, loads
the newest weights it has been offered, so later tokens carry the newer policy version. Weights reach a busy
worker because its Ray actor has a second thread, the `weights` concurrency group, that only runs
`offer_weights`: it fetches the tensors and stores them as the one pending (weights, version), newest wins. Every
other call (generate, update_weights, check, score, info) runs on the engine's own thread, one at a time in
submission order, exactly as in a plain actor, and only that thread touches the engine:

- ordered: the engine's version only grows. Pending weights are replaced only by a strictly newer version (an
  older or repeated offer that arrives late is dropped) and are loaded only when newer than the engine's; a
  pending update is never lost, only overtaken by a newer one, which is then loaded instead.
- `update_weights(v)`, in the call order, still guarantees what it always did: every call submitted after it
  sees version >= v (the controller's pacing relies on it: a task dispatched at v has no token older than v).
- the weight-sync probe: when a version arrives with a probe batch, the worker scores the probe right after
  loading that version (between chunks if it loads mid-generation), and `check(v)` returns those log-probs, so
  the check of v compares v's own weights with the trainer's v, even if the worker has moved on to a newer
  version since. A version the worker never loaded (overtaken while pending) is reported as skipped: no token
  came from it.

Broadcast weight sync (`cluster.weight_sync: broadcast`, `rl/weight_sync.py`) uses the same thread: `join_sync`
joins a generation of the sync group and `receive_weights` takes part in one broadcast, whose tensors become the
pending update exactly as an offer's do; the ordered `update_weights(None, v)` then waits for version v to have
arrived and loads the newest received (v or newer).

The local backend runs calls in order in the controller's process, so no weights can arrive mid-task there: it
generates in chunks with one version per task.
"""
from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from rollout.types import Sample, SamplingParams

WEIGHTS_GROUP = "weights"  # the Ray concurrency group (one thread) that receives weights while the engine works
_GROUP_METHODS = {"offer_weights": WEIGHTS_GROUP, "join_sync": WEIGHTS_GROUP, "receive_weights": WEIGHTS_GROUP}


class WorkerDied(Exception):
    def __init__(self, index: int, cause: BaseException):
        super().__init__(f"rollout worker {index} died: {type(cause).__name__}: {cause}")
        self.index, self.cause = index, cause


def chunk_seed(seed: int | None, k: int) -> int | None:
    """The sampling seed of chunk k of a task seeded `seed`: chunk 0 keeps the task's seed, later chunks get a
    deterministic hash of (seed, k); None stays None (the engine then seeds from its own call counter)."""
    if seed is None or k == 0:
        return seed
    h = hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % 2**31


def generate_in_chunks(engine, prompts: list[list[int]], sampling: SamplingParams, chunk_tokens: int,
                       between: Callable[[int], None] | None = None) -> list[Sample]:
    """`engine.generate` in chunks of at most `chunk_tokens` new tokens: after each chunk, samples that produced
    EOS or reached `sampling.max_new_tokens` stop; the others continue from prompt + completion so far with the
    remaining budget. `between(k)` runs before chunk k >= 1 (the worker loads newer weights there).

    Engine-agnostic: each chunk is an ordinary `generate` call, so its tokens carry the version and behaviour
    log-probs of the weights that sampled them (the engine recomputes the prefix with its current weights).
    Reproducible: chunk k is seeded `chunk_seed(sampling.seed, k)`, so the same seed and the same weight
    timeline give the same samples; with unchanged weights and greedy decoding the result equals one call's.
    """
    n = len(prompts)
    comp: list[list[int]] = [[] for _ in range(n)]
    lps: list[list[float]] = [[] for _ in range(n)]
    vers: list[list[int]] = [[] for _ in range(n)]
    reason = ["length"] * n
    active, done, k = list(range(n)), 0, 0  # every active sample has exactly `done` tokens
    while active:
        if k > 0 and between is not None:
            between(k)
        budget = min(chunk_tokens, sampling.max_new_tokens - done)
        sp = replace(sampling, max_new_tokens=budget, seed=chunk_seed(sampling.seed, k))
        out = engine.generate([list(prompts[i]) + comp[i] for i in active], sp)
        still = []
        for i, s in zip(active, out):
            if not s.completion_ids:
                raise RuntimeError(f"generate_in_chunks: the engine returned an empty completion for a budget of "
                                   f"{budget} tokens")
            comp[i] += s.completion_ids
            lps[i] += s.logprobs
            vers[i] += s.versions
            reason[i] = s.finish_reason
            # fewer tokens than asked without EOS: the engine stopped it (e.g. its context limit); it is finished
            if s.finish_reason != "stop" and len(s.completion_ids) == budget and done + budget < sampling.max_new_tokens:
                still.append(i)
        active, done, k = still, done + budget, k + 1
    return [Sample(prompt_ids=list(p), completion_ids=comp[i], logprobs=lps[i], versions=vers[i],
                   finish_reason=reason[i]) for i, p in enumerate(prompts)]


def _fetch(weights) -> dict[str, torch.Tensor]:
    """Weights as sent: a dict, or a one-element list holding a dict or a Ray object reference (boxed, so that Ray
    passes the reference instead of fetching the tensors before the call starts)."""
    if isinstance(weights, list):
        (weights,) = weights
    if not isinstance(weights, dict):
        import ray

        weights = ray.get(weights)
    return weights


class RolloutWorker:
    """Holds one engine. Constructed in-process or as a Ray actor (`ray.remote(RolloutWorker)`)."""

    def __init__(self, index: int, kind: str, model_path: str, engine_opts: dict, pin_core: int | None = None,
                 threads: int | None = None):
        from rl.cluster import place

        self.index = index
        self.core = place(pin_core, threads)
        from rollout.engine import make_engine

        self.engine = make_engine(kind, model_path, **engine_opts)
        # Weights offered while the engine works (see the module docstring). `_lock` guards `_pending` and
        # `_newest`; everything else is touched only by the engine's thread.
        self._lock = threading.Lock()
        self._pending: tuple[int, dict, tuple | None] | None = None  # (version, weights, probe)
        self._newest = -1  # newest version received: loaded or pending
        self._loaded = -1  # version of the weights this worker last loaded (-1: the engine's own initial weights)
        self._probe_lps: dict[int, list[list[float]]] = {}  # version -> probe log-probs scored right after loading it
        self._load_s = 0.0
        self._arrived = threading.Condition(self._lock)  # notified when a broadcast version becomes pending
        self._sync = None  # the broadcast group (rl.weight_sync.BroadcastGroup) with `cluster.weight_sync: broadcast`

    def info(self) -> dict:
        return {"index": self.index, "pid": os.getpid(), "host": socket.gethostname(), "core": self.core,
                "version": self.engine.version, "threads": torch.get_num_threads(),
                "device": str(getattr(self.engine, "device", "cpu"))}

    def generate(self, task_id: int, prompt_ids: list[list[int]], sampling: SamplingParams,
                 chunk_tokens: int | None = None) -> dict:
        """With `chunk_tokens`, in chunks, loading the newest offered weights between them (partial rollouts)."""
        t0, self._load_s = time.perf_counter(), 0.0
        self._load_pending()
        if chunk_tokens:
            samples = generate_in_chunks(self.engine, prompt_ids, sampling, chunk_tokens, self._between_chunks)
        else:
            samples = self.engine.generate(prompt_ids, sampling)
        return {"task_id": task_id, "samples": samples, "gen_s": time.perf_counter() - t0,
                "version": self.engine.version, "worker": self.index, "load_s": self._load_s}

    def _between_chunks(self, k: int) -> None:
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
        from rl.weight_sync import BroadcastGroup

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
        self.engine.update_weights(tensors.items(), version=version)
        self._loaded = version
        self._load_s += time.perf_counter() - t0
        if probe is not None:
            self._probe_lps[version] = self.engine.score(probe[0], probe[1], 1.0)

    def check(self, version: int) -> dict:
        """The weight-sync probe's T=1 log-probs under policy `version`, scored right after that version was loaded
        (in call order, after `update_weights(version, probe=...)`). logprobs is None if this worker never loaded
        `version` (a newer one overtook it while pending): then no token of its came from that version."""
        for v in [v for v in self._probe_lps if v < version]:
            del self._probe_lps[v]
        lps = self._probe_lps.pop(version, None)
        if lps is None and self._loaded == version:
            raise RuntimeError(f"check({version}): version {version} was loaded without a probe batch")
        return {"version": version, "logprobs": lps, "holds": self.engine.version}

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], temperature: float) -> dict:
        self._load_pending()
        return {"logprobs": self.engine.score(prompt_ids, completion_ids, temperature), "version": self.engine.version}

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
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
                 first_core: int = 1, partial_chunk_tokens: int | None = None, weights_thread: bool = False,
                 worker_cls: type = RolloutWorker):
        """partial_chunk_tokens: generate training tasks in chunks of this many tokens and, on Ray, give each actor
        a `weights` thread so that weights offered mid-task are loaded between chunks (None: whole tasks).
        weights_thread: give each Ray actor that thread anyway (broadcast weight sync receives on it).
        first_core: with `pin_cpus`, worker i is pinned to core first_core + i (the trainer ranks come first)."""
        if backend == "local" and n != 1:
            raise ValueError(f"cluster.rollout_workers={n}: the local backend runs exactly one worker in process "
                             f"(use cluster.backend=ray for more)")
        self.backend, self.n, self.args = backend, n, worker_args
        self.partial_chunk_tokens, self.worker_cls = partial_chunk_tokens, worker_cls
        self.weights_thread = bool(partial_chunk_tokens) or weights_thread
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
            self.workers[i] = self.worker_cls(**{**self._kwargs(i), "pin_core": None, "threads": None})
            return
        import ray

        if self.weights_thread:
            # The default group keeps one thread and in-order execution: every call but the weights methods runs one
            # at a time in submission order, as in a plain actor; those (`_GROUP_METHODS`) get their own thread.
            cls = ray.remote(concurrency_groups={WEIGHTS_GROUP: 1})(self.worker_cls)
            extra = {"allow_out_of_order_execution": False}
        else:
            cls, extra = ray.remote(self.worker_cls), {}
        actor = cls.options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0, max_concurrency=1,
            runtime_env={"env_vars": self.env_vars} if self.env_vars else None, **extra)
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
        m = getattr(self.workers[i], method)
        if method in _GROUP_METHODS:
            m = m.options(concurrency_group=_GROUP_METHODS[method])
        return m.remote(*args)

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
