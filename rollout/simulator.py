"""A discrete-event simulator of the asynchronous pipeline: M rollout workers, N data-parallel trainer ranks.

It paces generation and consumes groups with the controller's own `StalenessScheduler` (admission +
earliest-deadline-first), so it projects how the real design behaves past one machine from three measured
numbers: seconds per generation task on one worker, seconds per training step on one rank, and seconds per
weight publish. `rl bench async` calibrates it from its measured runs and checks it against them.

Model (deliberately simple, stated so a reader can disagree):
- a worker generates one task (k prompts x G samples) in `gen_s` (times a log-normal jitter when `jitter` > 0);
  it takes a new task whenever it is free and the staleness budget admits one, with the weights of the newest
  version published *before* that moment (weights reach a worker `sync_s` after the trainer publishes);
- the trainer takes P groups per step (waiting only when the bound says it must, as the controller does), then
  trains for `train_s / (N * dp_efficiency)` (N = 1: exactly `train_s`), then publishes for `sync_s`;
- workers and trainer never share a core (the bench pins them).
"""
from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

from rollout.staleness import StalenessScheduler


@dataclass
class SimResult:
    steps: int
    wall_s: float
    samples_per_s: float
    trainer_idle_frac: float
    worker_idle_frac: float
    max_staleness_seen: int
    mean_staleness: float


def simulate(*, workers: int, groups_per_step: int, prompts_per_task: int, group_size: int, max_staleness: int,
             gen_s: float, train_s: float, sync_s: float = 0.0, steps: int = 50, trainer_ranks: int = 1,
             dp_efficiency: float = 0.9, jitter: float = 0.0, seed: int = 0) -> SimResult:
    rng = random.Random(seed)
    sched = StalenessScheduler(groups_per_step, max_staleness, last_step=steps)
    P, k = groups_per_step, prompts_per_task
    step_train_s = train_s if trainer_ranks == 1 else train_s / (trainer_ranks * dp_efficiency)
    now, version = 0.0, 0
    published: list[tuple[float, int]] = [(0.0, 0)]  # (time weights reach workers, version)
    events: list[tuple[float, int, int, int, int]] = []  # (finish time, seq, worker, n groups, version)
    free = list(range(workers))
    busy_s = 0.0
    buffer: list[tuple[int, int]] = []  # (deadline, version) of finished groups
    seq = 0
    stale: list[int] = []
    trainer_wait = 0.0

    def worker_version(t: float) -> int:
        return max(v for (at, v) in published if at <= t)

    pending_deadlines: dict[int, int] = {}  # task seq -> the deadline its groups were admitted with

    def dispatch() -> None:
        nonlocal seq, busy_s
        while free:
            room = sched.room(version)
            n = min(k, room)
            if n <= 0:
                return
            w = free.pop(0)
            v = worker_version(now)
            deadline = sched.admit(n, version)
            d = gen_s * (math.exp(rng.gauss(0, jitter) - jitter ** 2 / 2) if jitter else 1.0)
            busy_s += d
            seq += 1
            pending_deadlines[seq] = deadline
            heapq.heappush(events, (now + d, seq, w, n, v))

    def advance() -> None:
        nonlocal now
        t, s, w, n, v = heapq.heappop(events)
        now = t
        free.append(w)
        buffer.extend([(pending_deadlines.pop(s), v)] * n)

    dispatch()
    for step in range(1, steps + 1):
        taken = 0
        t_wait0 = now
        while taken < P or sched.must_take() > 0:
            dispatch()
            buffer.sort()
            if buffer and sched.may_take(buffer[0][0], P - taken):
                deadline, v = buffer.pop(0)
                sched.consume(deadline)
                stale.append((step - 1) - v)
                taken += 1
                continue
            advance()
        sched.end_step()
        trainer_wait += now - t_wait0
        # train, then publish; workers keep generating meanwhile
        t_end = now + step_train_s + sync_s
        version_next = step
        while events and events[0][0] <= t_end:
            advance()
            dispatch()
        now = t_end
        version = version_next
        published.append((now, version))
        dispatch()
    wall = now
    samples = steps * P * group_size
    return SimResult(steps=steps, wall_s=wall, samples_per_s=samples / wall, trainer_idle_frac=trainer_wait / wall,
                     worker_idle_frac=1 - busy_s / (wall * workers) if wall else 0.0,
                     max_staleness_seen=max(stale), mean_staleness=sum(stale) / len(stale))
