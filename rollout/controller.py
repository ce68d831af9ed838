"""The rollout controller: keeps rollout workers generating groups ahead of the trainer, within `max_staleness`.

Flow: prompts are drawn from the sampler into *tasks* (a few prompts, each to be rolled out `group_size` times:
the grouping is the task's, one worker call each); a task is admitted by the `StalenessScheduler` (which gives
each of its groups a deadline step) and dispatched to a worker with a free slot, whose runner
(`rollout/runners/`) turns it into trajectories; they come back tagged with the policy version of every token,
are scored by `score_fn`, and wait in the buffer as *groups* (one prompt's trajectories) until the trainer's
`collect(step)` takes them, earliest deadline first. The controller never looks inside a trajectory beyond its
token versions. `publish(trainer, version)` ships the trainer's new weights to every worker and, with a probe batch, checks
each worker's log-probs against the trainer's. Two transports, one interface (`cluster.weight_sync`): the Ray
object store (trainer rank 0 puts the weights once, each worker fetches them) or a collective broadcast from trainer
rank 0 to every worker (`rollout/weight_sync.py`: NCCL on GPUs, gloo on CPU). A broadcast that fails (a worker died or
timed out) rebuilds the group, restarting dead workers, and sends the weights again.

Fault tolerance: a worker whose process dies (any call to it fails with `WorkerDied`) is restarted, given the
current weights, and every task it had in flight goes back to the front of the queue with its prompts, seed
and deadline, so no prompt is lost or trained on twice. Every drawn prompt gets a draw id; the ledger counts
draws, consumptions and duplicates (`rollout/*` metrics; a test kills a worker with SIGKILL and checks them).

With `max_staleness=0` and one worker this is exactly the synchronous loop: each step's P groups are generated
by the current policy, after the previous update, and consumed all at once.

Partial rollouts (a runner with `mid_task_weights`, e.g. `chunked`): workers make several engine calls per task,
and `publish` also *offers* the weights to every Ray worker on its weights thread, so a busy worker loads them at
its next call boundary and a trajectory's later tokens carry the newer version (`rollout/mixed_version_frac`). The accounting is unchanged: the
ordered `update_weights` still precedes every task dispatched after a publish, so a task dispatched at version v
has no token older than v (pacing and deadlines count from v; newer tokens only make a sample fresher), and each
worker's probe check compares the log-probs it scored right after loading a version with the trainer's for that
version; a version a worker never loaded (overtaken by a newer one mid-task) is counted in `sync/checks_skipped`.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import torch

from rl.errors import OrchardError, WeightSyncError
from rollout.staleness import StalenessScheduler
from rollout.types import CheckResult, GenResult, RolloutTask, Sample, SamplingParams, Trajectory
from rollout.workers import WorkerDied, WorkerPool

log = logging.getLogger("orchard")


@dataclass
class Task:
    """A task's scheduling state on the controller's side (the worker gets a `RolloutTask`)."""

    task_id: int
    prompt_indices: list[int]
    draw_ids: list[int]
    group_size: int  # trajectories per prompt: each prompt's trajectories form one group
    deadline: int
    seed: int
    version: int  # policy version when dispatched (the worker's weights are at least this new)
    worker: int | None = None
    attempts: int = 0


@dataclass
class Group:
    """One prompt's `group_size` trajectories, scored."""

    draw_id: int
    prompt_index: int
    trajectories: list[Trajectory]
    rewards: torch.Tensor  # [G]
    valid: torch.Tensor  # [G] bool
    deadline: int
    task_id: int
    worker: int
    reward_metrics: dict = field(default_factory=dict)

    @property
    def samples(self) -> list[Sample]:
        """The single-turn view of the trajectories (each must be one step)."""
        return [t.as_sample() for t in self.trajectories]


ScoreFn = Callable[[Task, list[Trajectory]], tuple[torch.Tensor, torch.Tensor, dict]]
"""(task, its trajectories, prompt-contiguous) -> (rewards [n*G], valid [n*G], metrics), n = len(task.prompt_indices),
G = task.group_size."""


@dataclass(eq=False)
class PendingCall:
    """A worker call in flight: whose it is, and what to do with its value."""

    worker: int
    incarnation: int  # the worker's incarnation when called: a value from an older one is stale
    on_value: Callable[[Any], None]
    what: str  # the worker method, for messages
    sync_part: bool = False  # a worker's side of a broadcast weight sync: its failure is survivable (retried)
    restart_on_failure: bool = False  # (broadcast) its failure means the worker never got its weights
    check_of: int | None = None  # the policy version a `check` call verifies


def _ignore(value: Any) -> None:
    """The handler of calls whose value carries nothing the controller keeps (offers, joins)."""


class RolloutController:
    def __init__(self, pool: WorkerPool, *, prompt_ids: list[list[int]], sampler, score_fn: ScoreFn,
                 group_size: int, groups_per_step: int, max_staleness: int, prompts_per_task: int,
                 sampling: SamplingParams, seed: int, last_step: int, start_version: int = 0,
                 inflight_per_worker: int = 2, max_restarts: int = 3, sync_tol: float = 1e-4,
                 on_workers_changed: Callable[[list[dict]], None] | None = None, sync_hub=None):
        self.pool, self.prompt_ids, self.sampler, self.score_fn = pool, prompt_ids, sampler, score_fn
        self.group_size, self.P, self.per_task = group_size, groups_per_step, prompts_per_task
        self.sched = StalenessScheduler(groups_per_step, max_staleness, start_version + 1, last_step)
        self.sampling, self.seed, self.last_step = sampling, seed, last_step
        self.version = start_version
        self.mid_task = pool.runner.mid_task_weights  # the runner loads newer weights between its engine calls
        self.send_offers = self.mid_task and pool.backend.concurrent  # so weights may reach a busy worker
        self.inflight_cap, self.max_restarts, self.sync_tol = inflight_per_worker, max_restarts, sync_tol
        self.on_workers_changed = on_workers_changed
        self.next_task_id, self.next_draw_id = 0, 0
        self.queue: deque[Task] = deque()  # admitted tasks waiting for a worker (re-queued ones first)
        self.pending: deque[tuple[int, list[int], list[int]]] = deque()  # (task_id, prompts, draw ids) from a checkpoint
        self.inflight: dict[int, Task] = {}  # task_id -> task on a worker
        self.buffer: list[Group] = []  # finished, scored, not yet consumed
        self.calls: dict[Any, PendingCall] = {}  # handle -> the call in flight
        self.incarnation = [0] * pool.n
        self.weights_ref, self.n_tensors = None, 0
        self.source = None  # the trainer whose weights `publish` sends
        self.hub = sync_hub  # broadcast weight sync (rollout.weight_sync.SyncHub); None: the Ray object store
        self._regroup = True  # broadcast: the group must be (re)built before the next broadcast
        self._broadcasting = False
        self._needs_weights: set[int] = set()  # broadcast: workers to send the ordered update to after the broadcast
        self.probe: list[Sample] = []
        self.trainer_probe: dict[int, list[list[float]]] = {}  # version -> the trainer's probe log-probs
        self.check_waiting: dict[int, set[int]] = {}  # version -> workers whose check of it has not come back
        self.t_start, self.busy_total = None, 0.0  # for the cumulative worker busy fraction (from the first collect)
        self.collecting = start_version  # the step being (or last) collected
        self.stats = {"draws": 0, "consumed": 0, "duplicates": 0, "requeued_tasks": 0, "worker_restarts": 0,
                      "stale_results": 0, "sync_groups": 0, "sync_failures": 0}
        self.consumed_ids: set[int] = set()
        self._step_acc = self._fresh_acc()
        self.worker_infos = [self.pool.get(self.pool.call(i, "info"), i) for i in range(pool.n)]
        if on_workers_changed:
            on_workers_changed([asdict(w) for w in self.worker_infos])

    @staticmethod
    def _fresh_acc() -> dict:
        return {"busy_s": 0.0, "wait_s": 0.0, "load_s": 0.0, "recv_s": 0.0, "checks": 0, "skipped": 0, "max_err": 0.0}

    # --- weights ---------------------------------------------------------------------------------------------------
    def publish(self, source, version: int, probe: list[Sample] | None = None,
                trainer_probe: list[list[float]] | None = None) -> float:
        """Send policy `version`'s weights from `source` (the trainer) to every worker; with a probe, queue a log-prob
        check on each. `source.weights()` gives (a name -> tensor dict or a Ray ObjectRef to one, n tensors) for the
        object store; broadcast sync calls `source.sync_join(spec)` and `source.sync_broadcast()` -> n tensors.
        Returns the seconds this took on the trainer's side."""
        t0 = time.perf_counter()
        self.source, self.version = source, version
        if probe is not None:
            self.probe = probe
            self.trainer_probe[version] = trainer_probe
            self.check_waiting[version] = set()
        if self.hub is None:
            weights, self.n_tensors = source.weights()
            self.weights_ref = self.pool.put(weights)
            for i in range(self.pool.n):
                self._send_weights(i)
        else:
            self._needs_weights.update(range(self.pool.n))
            self._broadcast()
        put_s = time.perf_counter() - t0
        self.pump()
        return put_s

    def _probe_args(self) -> tuple | None:
        if self.probe and self.version in self.trainer_probe:
            return [s.prompt_ids for s in self.probe], [s.completion_ids for s in self.probe]
        return None

    def _send_weights(self, i: int) -> None:
        """The ordered update (+ check) on worker i: object store, the boxed ref (the worker fetches the tensors
        itself, once, when it needs them); broadcast, None (it loads what its weights thread received)."""
        probe = self._probe_args()
        box = None if self.hub is not None else [self.weights_ref]
        if self.send_offers and self.hub is None:  # weights thread: loaded between its engine calls if mid-task
            self._call(i, _ignore, "offer_weights", box, self.version, probe)
        self._call(i, self._on_loaded, "update_weights", box, self.version, probe, sync_part=True,
                   restart_on_failure=True)
        if probe is not None:
            v = self.version
            self.check_waiting[v].add(i)
            self._call(i, lambda out, i=i, v=v: self._check(i, out, v), "check", v, check_of=v)

    def _broadcast(self) -> None:
        """Broadcast the current version to every worker (on their weights threads, so generation goes on), then
        queue the ordered update on the workers that need it. If a round fails (a member died, or a collective timed
        out), wait for every worker's side of it (dead workers are restarted meanwhile), rebuild the group and send
        again."""
        probe = self._probe_args()
        self._broadcasting = True
        try:
            for _ in range(self.max_restarts + 2):
                calls = []
                try:
                    if self._regroup:
                        spec = self.hub.next_spec()
                        calls = [self._call(i, _ignore, "join_sync", spec, i + 1, sync_part=True)
                                 for i in range(self.pool.n)]
                        self.source.sync_join(spec)  # returns once every member has joined
                        self._regroup = False
                        self.stats["sync_groups"] += 1
                    calls += [self._call(i, self._on_received, "receive_weights", self.version, probe, sync_part=True)
                              for i in range(self.pool.n)]
                    self.n_tensors = self.source.sync_broadcast()
                except Exception as e:  # noqa: BLE001 - any failure of the collective: rebuild and retry
                    self._regroup = True
                    self.stats["sync_failures"] += 1
                    log.warning(f"weight broadcast of policy version {self.version} failed ({type(e).__name__}: "
                                f"{e}); rebuilding the sync group (generation {self.hub.generation + 1})")
                    while any(h in self.calls for h in calls):  # each worker's side returns, fails or dies
                        self._poll(None)
                    continue
                for i in sorted(self._needs_weights):
                    self._send_weights(i)
                self._needs_weights.clear()
                return
        finally:
            self._broadcasting = False
        raise WeightSyncError(f"weight broadcast of policy version {self.version} failed {self.max_restarts + 2} "
                              f"times in a row (cluster.weight_sync=broadcast; try cluster.weight_sync=object_store)")

    def _on_loaded(self, load_s: float) -> None:
        self._step_acc["load_s"] += load_s

    def _on_received(self, recv_s: float) -> None:
        self._step_acc["recv_s"] += recv_s

    def _check(self, i: int, out: CheckResult, version: int) -> None:
        ours = self.trainer_probe[version]
        self._check_done(i, version)
        if out.logprobs is None:  # the worker never loaded `version` (a newer one overtook it mid-task)
            self._step_acc["skipped"] += 1
            return
        err = 0.0
        for a, b in zip(ours, out.logprobs):
            if a:
                err = max(err, (torch.tensor(a) - torch.tensor(b)).abs().max().item())
        self._step_acc["checks"] += 1
        self._step_acc["max_err"] = max(self._step_acc["max_err"], err)
        if not err <= self.sync_tol:
            raise WeightSyncError(
                f"weight sync check failed for policy version {version}: rollout worker {i} "
                f"(pid {self.worker_infos[i].pid}) log-probs differ from the trainer's by {err:.3g} > "
                f"trainer.sync_check_tol={self.sync_tol:g} on a probe batch of {len(self.probe)} samples "
                f"({self.n_tensors} tensors compared after the sync)")

    def _check_done(self, i: int, version: int) -> None:
        """Worker i's check of `version` is in (or lost with the worker); forget a version once all are in, but
        keep the newest one: a restarted worker is checked against it."""
        waiting = self.check_waiting.get(version)
        if waiting is None:
            return
        waiting.discard(i)
        if not waiting and version != self.version:
            del self.check_waiting[version], self.trainer_probe[version]
        for v in [v for v, w in self.check_waiting.items() if not w and v != self.version]:
            del self.check_waiting[v], self.trainer_probe[v]

    # --- dispatch --------------------------------------------------------------------------------------------------
    def _call(self, i: int, on_value: Callable[[Any], None], method: str, *args, **flags):
        """Call worker i's `method`; `on_value` gets the value when it comes back (unless the worker died meanwhile).
        `flags`: the `PendingCall` fields `sync_part`, `restart_on_failure`, `check_of`."""
        h = self.pool.call(i, method, *args)
        self.calls[h] = PendingCall(i, self.incarnation[i], on_value, method, **flags)
        return h

    def _free_slots(self, i: int) -> int:
        return self.inflight_cap - sum(1 for t in self.inflight.values() if t.worker == i)

    def _new_task(self, limit: int | None = None) -> Task | None:
        """Admit a new task of at most `limit` groups (None: no limit) if the staleness budget allows."""
        if self.version + 1 > self.last_step:  # no step left that could train on it
            return None
        room = self.sched.room(self.version)
        if limit is not None:
            room = min(room, limit)
        if room <= 0:
            return None
        if self.pending:
            task_id, prompts, draws = self.pending[0]
            n = min(len(prompts), room)
            if n < len(prompts):
                self.pending[0] = (task_id, prompts[n:], draws[n:])
                prompts, draws = prompts[:n], draws[:n]
            else:
                self.pending.popleft()
        else:
            n = min(self.per_task, room)
            task_id = self.next_task_id
            self.next_task_id += 1
            prompts = self.sampler.next(n)
            draws = list(range(self.next_draw_id, self.next_draw_id + n))
            self.next_draw_id += n
            self.stats["draws"] += n
        deadline = self.sched.admit(len(prompts), self.version)
        seed = (self.seed * 1_000_003 + task_id * 7919 + draws[0]) % 2**31
        return Task(task_id, prompts, draws, self.group_size, deadline, seed, self.version)

    def pump(self, admit_limit: int | None = None) -> None:
        """Dispatch queued and newly admitted tasks to workers with free slots, admitting at most `admit_limit` new
        groups (None: as many as the staleness budget allows)."""
        for i in range(self.pool.n):
            while self._free_slots(i) > 0:
                if self.queue:
                    task = self.queue.popleft()
                else:
                    task = self._new_task(admit_limit)
                    if task is not None and admit_limit is not None:
                        admit_limit -= len(task.prompt_indices)
                if task is None:
                    break
                task.worker, task.attempts, task.version = i, task.attempts + 1, self.version
                self.inflight[task.task_id] = task
                job = RolloutTask(task.task_id, [self.prompt_ids[p] for p in task.prompt_indices], task.group_size,
                                  replace(self.sampling, seed=task.seed))
                self._call(i, self._on_generated, "run", job)

    # --- results ---------------------------------------------------------------------------------------------------
    def _poll(self, timeout: float | None) -> None:
        """Process every finished call (waiting up to `timeout` for the first)."""
        t0 = time.perf_counter()
        ready = self.pool.wait(list(self.calls), timeout)
        self._step_acc["wait_s"] += time.perf_counter() - t0
        for h in ready:
            if h not in self.calls:  # handled by a nested poll (a broadcast retried within a restart)
                continue
            c = self.calls.pop(h)
            i = c.worker
            try:
                value = self.pool.result(h, i)
            except WorkerDied as e:
                if c.incarnation == self.incarnation[i]:
                    self._restart(i, e)
                continue
            except Exception as e:
                if self.hub is None or not c.sync_part:
                    raise
                if c.incarnation == self.incarnation[i]:  # its side of a broadcast failed: the trainer's side shows it too
                    log.warning(f"rollout worker {i}: {c.what} failed: {type(e).__name__}: "
                                f"{str(e).strip().splitlines()[-1]}")
                    if c.restart_on_failure:  # its weights never arrived: start it afresh
                        self._restart(i, WorkerDied(i, e))
                continue
            if c.incarnation != self.incarnation[i]:
                self.stats["stale_results"] += 1
                continue
            c.on_value(value)

    def _on_generated(self, out: GenResult) -> None:
        task = self.inflight.pop(out.task_id, None)
        if task is None:
            self.stats["stale_results"] += 1
            return
        self._step_acc["busy_s"] += out.gen_s
        self._step_acc["load_s"] += out.load_s  # newer weights loaded before or between engine calls
        self.busy_total += out.gen_s
        trajs = out.trajectories
        n, G = len(task.prompt_indices), task.group_size
        if len(trajs) != n * G:
            raise RuntimeError(f"rollout worker {out.worker}: runner {type(self.pool.runner).__name__} returned "
                               f"{len(trajs)} trajectories for task {task.task_id} ({n} prompts x group size {G})")
        rewards, valid, metrics = self.score_fn(task, trajs)
        for j, (p, d) in enumerate(zip(task.prompt_indices, task.draw_ids)):
            sl = slice(j * G, (j + 1) * G)
            self.buffer.append(Group(d, p, trajs[sl], rewards[sl], valid[sl], task.deadline, task.task_id,
                                     out.worker, metrics))

    def _restart(self, i: int, err: WorkerDied) -> None:
        if self.pool.restarts[i] >= self.max_restarts:
            raise OrchardError(f"rollout worker {i} died {self.pool.restarts[i] + 1} times "
                               f"(cluster.max_worker_restarts={self.max_restarts}); last error: {err.cause}") from err
        lost = sorted((t for t in self.inflight.values() if t.worker == i), key=lambda t: t.task_id)
        log.warning(f"{err}; restarting it and re-queuing {len(lost)} task(s) "
                    f"({sum(len(t.prompt_indices) for t in lost)} prompts)")
        for t in reversed(lost):
            del self.inflight[t.task_id]
            t.worker = None
            self.queue.appendleft(t)
        self.stats["requeued_tasks"] += len(lost)
        self.stats["worker_restarts"] += 1
        self.incarnation[i] += 1
        for v in list(self.check_waiting):  # its pending checks died with it
            self._check_done(i, v)
        self.pool.restart(i)
        self.worker_infos[i] = self.pool.get(self.pool.call(i, "info"), i)
        if self.on_workers_changed:
            self.on_workers_changed([asdict(w) for w in self.worker_infos])
        if self.hub is not None:  # a new member: rebuild the group and broadcast the current weights again
            self._regroup = True
            if self.source is not None:
                self._needs_weights.add(i)
                if not self._broadcasting:  # (within a broadcast, its retry does this)
                    self._broadcast()
        elif self.weights_ref is not None:
            self._send_weights(i)

    def call_blocking(self, i: int, method: str, *args):
        """Run one worker call to completion (after everything queued on that worker), surviving restarts."""
        while True:
            box: dict = {}
            self._call(i, lambda value: box.update(value=value), method, *args)
            while "value" not in box:
                before = self.incarnation[i]
                self._poll(None)
                if self.incarnation[i] != before:  # the worker died; the call is lost with it: ask again
                    break
            if "value" in box:
                return box["value"]

    # --- the trainer's side ----------------------------------------------------------------------------------------
    def collect(self, step: int, accept: Callable[[Group], bool] | None = None, max_consumed: int | None = None
                ) -> tuple[list[Group], dict]:
        """The P groups (fewer if `accept` rejects too many within `max_consumed`) that step `step` trains on,
        earliest deadline first; waits only for groups the staleness bound makes due now."""
        if step != self.version + 1:
            raise RuntimeError(f"collect({step}) with policy version {self.version}: expected step {self.version + 1}")
        self.collecting = step
        if self.t_start is None:
            self.t_start, self.busy_total = time.perf_counter(), 0.0
        budget = max_consumed or self.P
        taken: list[Group] = []
        consumed = rejected = 0
        margins: list[int] = []
        while True:
            need = self.P - len(taken)
            must = self.sched.must_take()
            if (need <= 0 or consumed >= budget) and must == 0:
                break
            # discarded groups (dynamic sampling) are replaced, but never beyond the step's budget
            self.pump(None if accept is None else max(0, budget - consumed - self.sched.n_outstanding))
            self._poll(0)
            g = self._eligible(need)
            if g is None:
                if not self.calls:
                    raise RuntimeError(f"step {step}: waiting for groups but nothing is in flight "
                                       f"(outstanding {dict(self.sched.outstanding)}, queue {len(self.queue)})")
                self._poll(None)
                continue
            self.buffer.remove(g)
            consumed += 1
            keep = need > 0 and (accept is None or accept(g)) and consumed <= budget
            margins.append(self.sched.consume(g.deadline, into_batch=keep))
            if g.draw_id in self.consumed_ids:
                self.stats["duplicates"] += 1
            self.consumed_ids.add(g.draw_id)
            self.stats["consumed"] += 1
            if keep:
                taken.append(g)
            else:
                rejected += 1
        self.sched.end_step()
        self.pump()  # with max_staleness > 0, keep generating while the trainer updates
        acc, self._step_acc = self._step_acc, self._fresh_acc()
        m = {"rollout/groups": len(taken), "rollout/groups_rejected": rejected,
             "rollout/outstanding_groups": self.sched.n_outstanding, "rollout/buffered_groups": len(self.buffer),
             "rollout/min_deadline_margin": min(margins) if margins else 0,
             "rollout/draws": self.stats["draws"], "rollout/consumed": self.stats["consumed"],
             "rollout/duplicates": self.stats["duplicates"], "rollout/requeued_tasks": self.stats["requeued_tasks"],
             "rollout/worker_restarts": self.stats["worker_restarts"],
             "perf/trainer_wait_s": acc["wait_s"], "perf/worker_busy_frac": self.busy_total / (max(time.perf_counter() - self.t_start, 1e-9) * self.pool.n),
             "perf/worker_gen_s": acc["busy_s"], "sync/worker_load_s": acc["load_s"]}
        if self.hub is not None:
            m.update({"sync/worker_recv_s": acc["recv_s"], "sync/groups_built": self.stats["sync_groups"],
                      "sync/broadcast_failures": self.stats["sync_failures"]})
        if acc["checks"]:
            m["sync/probe_max_abs_err"] = acc["max_err"]
            m["sync/checks"] = acc["checks"]
        if acc["skipped"]:
            m["sync/checks_skipped"] = acc["skipped"]
        if self.mid_task:  # partial rollouts: the fraction of trajectories whose tokens span more than one version
            spans = [len(set(t.versions)) > 1 for g in taken for t in g.trajectories]
            m["rollout/mixed_version_frac"] = sum(spans) / len(spans) if spans else 0.0
        return taken, m

    def _eligible(self, need: int) -> Group | None:
        """The next finished group the trainer may take (earliest deadline first), or None if it must wait."""
        if not self.buffer:
            return None
        self.buffer.sort(key=lambda g: (g.deadline, g.draw_id))
        g = self.buffer[0]
        return g if self.sched.may_take(g.deadline, need) else None

    def drain_checks(self, metrics: dict) -> None:
        """Wait for outstanding weight-sync checks (the last publish is verified before the job ends) and add the
        checks that finished since the last `collect` to that step's `metrics`."""
        while any(c.check_of is not None for c in self.calls.values()):
            self._poll(None)
        acc = self._step_acc
        if acc["checks"]:
            metrics["sync/checks"] = metrics.get("sync/checks", 0) + acc["checks"]
            metrics["sync/probe_max_abs_err"] = max(metrics.get("sync/probe_max_abs_err", 0.0), acc["max_err"])
        if acc["skipped"]:
            metrics["sync/checks_skipped"] = metrics.get("sync/checks_skipped", 0) + acc["skipped"]
        acc["checks"], acc["skipped"], acc["max_err"] = 0, 0, 0.0

    # --- resume ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Prompts drawn but not yet trained on (queued, in flight or buffered) and the id counters."""
        rest: dict[int, tuple[list[int], list[int]]] = {}
        for t in list(self.pending_tasks()):
            rest[t[0]] = (list(t[1]), list(t[2]))
        for g in self.buffer:
            p, d = rest.setdefault(g.task_id, ([], []))
            p.append(g.prompt_index)
            d.append(g.draw_id)
        pending = [[tid, p, d] for tid, (p, d) in sorted(rest.items())]
        return {"pending": pending, "next_task_id": self.next_task_id, "next_draw_id": self.next_draw_id,
                "stats": dict(self.stats)}

    def pending_tasks(self):
        yield from self.pending
        for t in list(self.queue) + list(self.inflight.values()):
            yield t.task_id, t.prompt_indices, t.draw_ids

    def load_state_dict(self, state: dict) -> None:
        self.pending = deque((tid, p, d) for tid, p, d in state["pending"])
        self.next_task_id, self.next_draw_id = state["next_task_id"], state["next_draw_id"]
        self.stats.update(state.get("stats", {}))

    def close(self) -> None:
        self.pool.close()
