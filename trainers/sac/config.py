"""SAC job config (CleanRL sac_continuous_action.py defaults), plus APT's asynchronous env workers.

`workers: 0` is the baseline: one env, stepped synchronously, one gradient update per env step (CleanRL).
`workers: N` is APT (docs/algorithms.md section 4): N Ray actors step their own env with the latest policy the
learner published and send back transitions; the learner fills the replay buffer from them and trains without
waiting, publishing its actor every `publish_every` new transitions. Its update-to-data ratio is kept between
`min_utd` (workers wait while the learner is behind) and `max_utd` (the learner waits for data).

Resume restores the networks, optimizers, entropy temperature, RNG and step counters, but NOT the replay
buffer (it can be GBs): a resumed run refills it with `learning_starts` fresh transitions from the restored
policy before it updates again. EnvPool's C++ env state cannot be saved either: envs are re-seeded from
(seed, step).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rl.config import JobConfig, Section


class EnvConfig(Section):
    name: str = "Pendulum-v1"
    """A registered continuous-action vector env (`envs.vector.ENVS`), e.g. Pendulum-v1, InvertedPendulum-v4, Hopper-v4."""


class SACConfig(JobConfig):
    algo: Literal["sac"] = "sac"
    """Which job to run."""
    env: EnvConfig = EnvConfig()
    """Environment."""
    total_timesteps: int = Field(50_000, ge=1)
    """Environment transitions to train for (all workers together)."""
    iteration_steps: int = Field(1000, ge=1)
    """Env transitions per logged iteration: metrics, the progress bar and `checkpoint.every` count iterations."""
    buffer_size: int = Field(1_000_000, ge=1)
    """Replay buffer capacity (transitions)."""
    gamma: float = Field(0.99, ge=0, le=1)
    """Discount."""
    tau: float = Field(0.005, gt=0, le=1)
    """Polyak coefficient of the target Q networks: target <- tau * online + (1 - tau) * target."""
    batch_size: int = Field(256, ge=1)
    """Replay minibatch size."""
    learning_starts: int = Field(5000, ge=1)
    """Transitions (uniform random actions) collected before the first update; after a resume, the refill size."""
    policy_lr: float = Field(3e-4, gt=0)
    """Adam learning rate of the actor (and of the entropy temperature)."""
    q_lr: float = Field(1e-3, gt=0)
    """Adam learning rate of the twin Q networks."""
    policy_frequency: int = Field(2, ge=1)
    """Delayed actor updates: every N Q updates, N actor (and alpha) updates (TD3-style, as CleanRL)."""
    target_network_frequency: int = Field(1, ge=1)
    """Polyak-update the target networks every N Q updates."""
    alpha: float = Field(0.2, gt=0)
    """Entropy temperature (initial value when autotune)."""
    autotune: bool = True
    """Learn alpha toward the target entropy -act_dim."""
    hidden: int = Field(256, ge=1)
    """Width of the two ReLU hidden layers of the actor and each Q network."""
    workers: int = Field(0, ge=0)
    """0: synchronous single-env loop (baseline). N >= 1: APT with N asynchronous env workers (Ray actors)."""
    publish_every: int = Field(400, ge=1)
    """APT: the learner publishes its actor to the workers every this many new transitions (APT's update_every)."""
    worker_chunk: int = Field(50, ge=1)
    """APT: transitions a worker steps per call before handing them to the learner (two calls are kept in flight)."""
    max_utd: float = Field(1.0, gt=0)
    """APT: at most this many updates per received transition (the learner waits for data beyond it). The sync
    loop always does exactly 1."""
    min_utd: float = Field(1.0, ge=0)
    """APT back-pressure: workers are not handed new work while the learner is below this many updates per
    received transition (beyond learning_starts and one round of in-flight calls). 1.0 with max_utd 1.0 keeps the
    sync loop's update-to-data ratio, with env stepping off the learner's critical path; 0: APT's free-running
    workers (they never wait; on a cheap env the learner then sees far more data than it can train on)."""
    torch_threads: int = Field(1, ge=0)
    """Torch intra-op threads of the learner (0: torch's default). APT workers always use 1. On our shared 2-core
    machines 2 threads made a 256x256 MLP update ~80x slower than 1 (thread contention), hence 1."""
    target_return: float | None = None
    """Record wall time / steps when the mean training return of the last `target_window` episodes reaches this."""
    target_window: int = Field(10, ge=1)
    """Episodes averaged for `target_return`."""
    stop_at_target: bool = False
    """Stop training as soon as `target_return` is reached (benchmarks)."""
    eval_episodes: int = Field(10, ge=1)
    """Episodes (deterministic policy: tanh of the mean) evaluated before and after training."""

    @model_validator(mode="after")
    def _check_utd(self):
        if self.min_utd > self.max_utd:
            raise ValueError(f"min_utd={self.min_utd} must not exceed max_utd={self.max_utd}")
        return self
