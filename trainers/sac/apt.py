"""APT's asynchronous env workers (ALGORITHMS.md section 4) as Ray actors.

Each worker owns one env (an `EnvRunner`) and a CPU copy of the actor. The learner keeps two `rollout` calls in
flight per worker (Ray runs an actor's calls in order, so a worker never idles waiting for the learner); each
call steps `worker_chunk` transitions with the newest policy the learner had published when the call was made
(uniformly random before the first publication) and returns them. The learner publishes its actor (one
`ray.put`) every `publish_every` received transitions and never waits for data unless it is at `max_utd`.

`collect(actor, block)` is the same call the synchronous collector answers, so `train.py` has one loop.
"""
from __future__ import annotations

import os
import shutil
import tempfile
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

        self.ray = ray
        self.publish_every, self.chunk = cfg.publish_every, cfg.worker_chunk
        self._temp_dir = None
        if not ray.is_initialized():  # a quiet local Ray of our own; workers must import this checkout
            self._temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
            ray.init(num_cpus=cfg.workers + 1, include_dashboard=False, _temp_dir=self._temp_dir, log_to_driver=False,
                     configure_logging=False)
        remote = ray.remote(num_cpus=0)(EnvWorker)  # 0 logical CPUs: fits any Ray cluster; each uses 1 thread
        self.workers = [remote.remote(cfg.env.name, seed + 7919 * i, obs_dim, act_dim, cfg.hidden)
                        for i in range(cfg.workers)]
        self.version, self.weights, self.since_publish = -1, None, 0
        self.inflight: dict = {}  # ObjectRef -> worker index
        self.received = 0  # transitions received from workers (including any drained at close)
        self.publications, self._lag_sum, self._lag_n = 0, 0, 0
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

    def collect(self, actor: Actor | None, block: bool) -> tuple[Transitions | None, list[tuple[float, int]]]:
        """Whatever transitions workers have finished (waiting for at least one chunk if `block`). Publishes
        `actor` first when a publication is due (None: keep the workers acting randomly)."""
        if actor is not None and (self.version < 0 or self.since_publish >= self.publish_every):
            self.publish(actor)
        refs = list(self.inflight)
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        if not ready and block:
            ready, _ = self.ray.wait(refs, num_returns=1)
        parts, episodes = [], []
        for ref in ready:
            i = self.inflight.pop(ref)
            version, transitions, eps = self.ray.get(ref)
            self._launch(i)  # with the newest published weights
            if version >= 0:
                self._lag_sum, self._lag_n = self._lag_sum + self.version - version, self._lag_n + 1
            parts.append(transitions)
            episodes += eps
        n = sum(len(p) for p in parts)
        self.received += n
        self.since_publish += n
        return (Transitions.concat(parts) if parts else None), episodes

    def metrics(self) -> dict:
        """Mean policy lag (publications between the policy that acted and the newest) since the last call."""
        m = {"apt/policy_lag": self._lag_sum / self._lag_n} if self._lag_n else {}
        self._lag_sum, self._lag_n = 0, 0
        return {**m, "apt/publications": self.publications}

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
            if self._temp_dir is not None:
                self.ray.shutdown()
                shutil.rmtree(self._temp_dir, ignore_errors=True)
        return {"apt/workers": len(self.workers), "apt/transitions_received": self.received,
                "apt/transitions_stepped": stepped, "apt/publications": self.publications}
