"""APT's asynchronous env workers (docs/algorithms.md section 4) as Ray actors.

Each worker owns one env (an `EnvRunner`) and a CPU copy of the actor. The learner keeps two `rollout` calls in
flight per worker (Ray runs an actor's calls in order, so a worker never idles waiting for the learner); each
call steps `worker_chunk` transitions with the newest policy the learner had published when the call was made
(uniformly random before the first publication) and returns them. The learner publishes its actor (one
`ray.put`) every `publish_every` received transitions and never waits for data unless it is at `max_utd`.

Back-pressure (`min_utd` > 0): a worker call is launched only while the transitions requested so far stay within
`learning_starts + updates / min_utd` plus one round of in-flight calls (2 per worker), so the learner's
update-to-data ratio cannot fall far below `min_utd` when the workers outrun it. `min_utd: 0` is APT's original
free-running workers. When the env is the slow side the bound never binds.

Ray is started (or reused) through `rl.cluster.init_ray`: the project's quiet local Ray (no dashboard, no auth
token, 127.0.0.1, temp files under <tmp>/orchard-ray-<uid>); it is shut down at close only if we started it.

`collect(actor, block, updates)` is the same call the synchronous collector answers, so `train.py` has one loop.

Why these workers are plain Ray actors and not `rollout/workers.py`'s `WorkerPool`: that pool hosts LLM engines
(its worker is a `RolloutWorker`: generate, versioned weight offers with probe checks, scoring), and its `local`
backend runs every call inline in the caller's process, which would put env stepping back on the learner's
critical path, the one thing APT exists to remove (in-process stepping is `workers: 0`). What APT needs is an actor
per env, two calls in flight and `ray.wait`, plus a back-pressure bound the pool does not have; what the two share
(starting Ray) is already shared through `rl.cluster.init_ray`. Reusing the pool would first mean making it generic
over the actor it hosts; if the rollout runners make it so, `EnvWorker` is the second body to put behind it, and
it would gain the pool's restart of dead workers, which APT does not have.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from trainers.sac.buffer import Transitions
from trainers.sac.config import SACConfig
from trainers.sac.nets import Actor
from trainers.sac.runner import EnvRunner

ROOT = Path(__file__).resolve().parents[2]


class EnvWorker:
    """Body of one Ray actor: an env runner acting with the latest weights it was handed."""

    def __init__(self, env_name: str, seed: int, obs_dim: int, act_dim: int, hidden: int):
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        self.runner = EnvRunner(env_name, seed)
        self.actor = Actor(obs_dim, act_dim, hidden, self.runner.low, self.runner.high)
        self.version = -1

    def rollout(self, version: int, weights: dict | None, n: int):
        """Step n transitions with policy `version` (-1: random). Returns (version, Transitions, episodes)."""
        if version >= 0 and version != self.version:
            self.actor.load_state_dict(weights)
            self.version = version
        transitions, episodes = self.runner.run(self.actor if version >= 0 else None, n)
        return version, transitions, episodes

    def stepped(self) -> int:
        return self.runner.stepped


class AptCollector:
    def __init__(self, cfg: SACConfig, seed: int, obs_dim: int, act_dim: int):
        import ray

        from rl.cluster import ClusterConfig, init_ray

        self.ray = ray
        self.publish_every, self.chunk = cfg.publish_every, cfg.worker_chunk
        self.min_utd, self.learning_starts = cfg.min_utd, cfg.learning_starts
        # Workers must import this checkout (trainers.sac.apt) wherever the driver was started from.
        if not ray.is_initialized():
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        self._started = init_ray(ClusterConfig(rollout_workers=cfg.workers))
        remote = ray.remote(num_cpus=0)(EnvWorker)  # 0 logical CPUs: fits any Ray cluster; each uses 1 thread
        self.workers = [remote.remote(cfg.env.name, seed + 7919 * i, obs_dim, act_dim, cfg.hidden)
                        for i in range(cfg.workers)]
        self.window = 2 * len(self.workers) * self.chunk  # one round of in-flight calls
        self.version, self.weights, self.since_publish = -1, None, 0
        self.inflight: dict = {}  # ObjectRef -> worker index
        self.idle: list[int] = []  # call slots (worker indices) held back by the back-pressure bound
        self.received = 0  # transitions received from workers (including any drained at close)
        self.publications, self.throttled, self._lag_sum, self._lag_n = 0, 0, 0, 0
        for i in range(len(self.workers)):
            self._launch(i)
            self._launch(i)

    def _launch(self, i: int) -> None:
        self.inflight[self.workers[i].rollout.remote(self.version, self.weights, self.chunk)] = i

    def publish(self, actor: Actor) -> None:
        self.version += 1
        self.weights = self.ray.put({k: v.detach().clone() for k, v in actor.state_dict().items()})
        self.since_publish = 0
        self.publications += 1

    def _allowed(self, updates: int) -> bool:
        """May one more call be launched? (`updates`: learner updates since this collector started.)"""
        if self.min_utd <= 0:
            return True
        requested = self.received + self.chunk * (len(self.inflight) + 1)
        return requested <= self.learning_starts + updates / self.min_utd + self.window

    def _launch_idle(self, updates: int, force: bool = False) -> None:
        while self.idle and (self._allowed(updates) or (force and not self.inflight)):
            self._launch(self.idle.pop(0))

    def collect(self, actor: Actor | None, block: bool,
                updates: int = 0) -> tuple[Transitions | None, list[tuple[float, int]]]:
        """Whatever transitions workers have finished (waiting for at least one chunk if `block`). Publishes
        `actor` first when a publication is due (None: keep the workers acting randomly). `updates` (learner
        updates since this collector started) drives the back-pressure bound."""
        if actor is not None and (self.version < 0 or self.since_publish >= self.publish_every):
            self.publish(actor)
        self._launch_idle(updates, force=block)  # never wait on nothing
        refs = list(self.inflight)
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        if not ready and block:
            ready, _ = self.ray.wait(refs, num_returns=1)
        parts, episodes = [], []
        for ref in ready:
            i = self.inflight.pop(ref)
            version, transitions, eps = self.ray.get(ref)
            self.received += len(transitions)
            self.since_publish += len(transitions)
            if self._allowed(updates):
                self._launch(i)  # with the newest published weights
            else:
                self.idle.append(i)
                self.throttled += 1
            if version >= 0:
                self._lag_sum, self._lag_n = self._lag_sum + self.version - version, self._lag_n + 1
            parts.append(transitions)
            episodes += eps
        return (Transitions.concat(parts) if parts else None), episodes

    def metrics(self) -> dict:
        """Mean policy lag (publications between the policy that acted and the newest) since the last call."""
        m = {"apt/policy_lag": self._lag_sum / self._lag_n} if self._lag_n else {}
        self._lag_sum, self._lag_n = 0, 0
        return {**m, "apt/publications": self.publications, "apt/throttled_calls": self.throttled}

    def close(self) -> dict:
        """Drain in-flight calls, check the books, stop the workers (and our Ray). Returns transition accounting."""
        try:
            for _, transitions, _ in self.ray.get(list(self.inflight)):
                self.received += len(transitions)
            self.inflight.clear()
            stepped = int(np.sum(self.ray.get([w.stepped.remote() for w in self.workers])))
        finally:
            for w in self.workers:
                self.ray.kill(w)
            if self._started:
                self.ray.shutdown()
        return {"apt/workers": len(self.workers), "apt/transitions_received": self.received,
                "apt/transitions_stepped": stepped, "apt/publications": self.publications,
                "apt/throttled_calls": self.throttled}
