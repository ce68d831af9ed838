"""SAC for continuous-action envs, CleanRL style (sac_continuous_action.py): read top to bottom.

One loop for both modes: collect (sync: one env step with the current actor; APT: whatever the async workers
have sent) -> replay buffer -> update (twin soft Q, delayed actor + temperature, Polyak targets) -> log/checkpoint
every `iteration_steps` transitions. The sync loop does exactly one update per transition; the APT learner keeps
updating while data streams in, at most `max_utd` updates per received transition (and the workers are held back
while it falls below `min_utd`).
"""
from __future__ import annotations

import copy
import logging
import time
from collections import deque

import numpy as np
import torch

from envs.vector import EpisodeStats, action_bounds, make_vec_env
from rl.errors import ConfigError
from rl.jobkit import checkpoint, evaluate_before, make_tracker, start, summarize, write_state
from rl.rundir import RunDir
from trainers.sac.buffer import Batch, ReplayBuffer
from trainers.sac.config import SACConfig
from trainers.sac.loss import actor_loss, alpha_loss, q_loss, soft_q_target
from trainers.sac.nets import Actor, SoftQ
from trainers.sac.runner import EnvRunner

log = logging.getLogger("orchard")

STATE_FILE = "state.pt"  # in every checkpoint: networks, optimizers, RNGs, iteration, transitions, eval_before


class SAC:
    """Networks, optimizers and the temperature; `update(batch)` is one CleanRL SAC iteration."""

    def __init__(self, obs_dim: int, act_dim: int, low: np.ndarray, high: np.ndarray, cfg: SACConfig):
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        self.actor = Actor(obs_dim, act_dim, cfg.hidden, low, high)
        self.qf1, self.qf2 = SoftQ(obs_dim, act_dim, cfg.hidden), SoftQ(obs_dim, act_dim, cfg.hidden)
        self.qf1_target, self.qf2_target = copy.deepcopy(self.qf1), copy.deepcopy(self.qf2)
        self.q_optimizer = torch.optim.Adam([*self.qf1.parameters(), *self.qf2.parameters()], lr=cfg.q_lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.policy_lr)
        self.target_entropy = -float(act_dim)
        self.log_alpha = torch.tensor(float(np.log(cfg.alpha)), requires_grad=cfg.autotune)
        self.a_optimizer = torch.optim.Adam([self.log_alpha], lr=cfg.policy_lr) if cfg.autotune else None
        self.alpha = cfg.alpha
        self.updates = 0

    def update(self, b: Batch) -> dict:
        cfg = self.cfg
        self.updates += 1
        # critic: soft Bellman target from the target networks and a fresh next action
        with torch.no_grad():
            next_action, next_logp = self.actor.sample(b.next_obs)  # [B, A], [B]
            y = soft_q_target(b.rewards, b.terminated, self.qf1_target(b.next_obs, next_action),
                              self.qf2_target(b.next_obs, next_action), next_logp, cfg.gamma, self.alpha)  # [B]
        qf_loss, m = q_loss(self.qf1(b.obs, b.actions), self.qf2(b.obs, b.actions), y)
        self.q_optimizer.zero_grad()
        qf_loss.backward()
        self.q_optimizer.step()
        # actor and temperature: delayed, policy_frequency steps at once (TD3 trick, as CleanRL)
        if self.updates % cfg.policy_frequency == 0:
            for _ in range(cfg.policy_frequency):
                pi, logp = self.actor.sample(b.obs)
                a_loss, am = actor_loss(self.qf1(b.obs, pi), self.qf2(b.obs, pi), logp, self.alpha)
                self.actor_optimizer.zero_grad()
                a_loss.backward()
                self.actor_optimizer.step()
                m.update(am)
                if cfg.autotune:
                    with torch.no_grad():
                        _, logp = self.actor.sample(b.obs)
                    al, alm = alpha_loss(self.log_alpha, logp, self.target_entropy)
                    self.a_optimizer.zero_grad()
                    al.backward()
                    self.a_optimizer.step()
                    self.alpha = self.log_alpha.exp().item()
                    m.update(alm)
        # targets: Polyak averaging
        if self.updates % cfg.target_network_frequency == 0:
            with torch.no_grad():
                for net, target in ((self.qf1, self.qf1_target), (self.qf2, self.qf2_target)):
                    for p, tp in zip(net.parameters(), target.parameters()):
                        tp.mul_(1 - cfg.tau).add_(p, alpha=cfg.tau)
        m["losses/alpha"] = self.alpha
        return m

    def state_dict(self) -> dict:
        nets = ("actor", "qf1", "qf2", "qf1_target", "qf2_target", "q_optimizer", "actor_optimizer")
        return {**{k: getattr(self, k).state_dict() for k in nets}, "log_alpha": self.log_alpha.detach().clone(),
                "a_optimizer": self.a_optimizer.state_dict() if self.a_optimizer else None, "updates": self.updates}

    def load_state_dict(self, s: dict) -> None:
        for k in ("actor", "qf1", "qf2", "qf1_target", "qf2_target", "q_optimizer", "actor_optimizer"):
            getattr(self, k).load_state_dict(s[k])
        with torch.no_grad():
            self.log_alpha.copy_(s["log_alpha"])
        if self.a_optimizer is not None and s["a_optimizer"] is not None:
            self.a_optimizer.load_state_dict(s["a_optimizer"])
        self.alpha = self.log_alpha.exp().item() if self.cfg.autotune else self.cfg.alpha
        self.updates = s["updates"]


class SyncCollector:
    """The baseline: one env in this process, one transition per call."""

    def __init__(self, cfg: SACConfig, seed: int):
        self.runner = EnvRunner(cfg.env.name, seed)

    def collect(self, actor: Actor | None, block: bool, updates: int = 0):
        return self.runner.run(actor, 1)

    def metrics(self) -> dict:
        return {}

    def close(self) -> dict:
        self.runner.close()
        return {}


@torch.no_grad()
def evaluate(actor: Actor, cfg: SACConfig, seed: int) -> float:
    """Mean return of the deterministic policy (tanh of the mean) over cfg.eval_episodes episodes."""
    env = make_vec_env(cfg.env.name, min(cfg.eval_episodes, 8), seed)
    obs, _ = env.reset()
    stats = EpisodeStats(env.num_envs)
    returns: list[float] = []
    while len(returns) < cfg.eval_episodes:
        obs, r, term, trunc, _ = env.step(actor.deterministic(torch.as_tensor(obs, dtype=torch.float32)).numpy())
        stats.update(r, term, trunc)
        returns += [ret for ret, _ in stats.pop()]
    env.close()
    return float(np.mean(returns[: cfg.eval_episodes]))


def build_sac(cfg: SACConfig) -> SAC:
    """A fresh SAC (actor, critics, optimizers) sized by the env's spaces."""
    probe = make_vec_env(cfg.env.name, 1, cfg.seed)
    obs_dim = int(np.prod(probe.single_observation_space.shape))
    low, high = action_bounds(probe)
    probe.close()
    return SAC(obs_dim, len(low), low, high, cfg)


def evaluate_checkpoint(cfg: SACConfig, ckpt) -> dict:
    """`rl eval` of a SAC run: the deterministic return of the checkpoint's actor on the held-out seed the run's own
    final evaluation uses (so a finished run's last checkpoint gives its summary's eval/return_after)."""
    if ckpt is None:
        raise ConfigError("rl eval: a SAC policy is evaluated from a run directory with a complete checkpoint")
    sac = build_sac(cfg)
    sac.load_state_dict(torch.load(ckpt / STATE_FILE, weights_only=False)["sac"])
    t0 = time.time()
    ret = evaluate(sac.actor, cfg, cfg.seed + 10_000)
    return {"algo": "sac", "env": cfg.env.name, "checkpoint": str(ckpt), "policy": "deterministic",
            "episodes": cfg.eval_episodes, "seed": cfg.seed + 10_000, "eval/return": ret, "eval_time_s": time.time() - t0}


def train(cfg: SACConfig, run: RunDir) -> dict:
    job = start(run, cfg.seed, cfg.torch_threads)
    sac = build_sac(cfg)
    sample_rng = np.random.default_rng(cfg.seed)
    iterations = max(1, -(-cfg.total_timesteps // cfg.iteration_steps))
    state = job.load_state(STATE_FILE)
    global_step = 0
    if job.resumed:
        sac.load_state_dict(state["sac"])
        sample_rng.bit_generator.state = state["sample_rng"]
        global_step = state["global_step"]
        log.info(f"{global_step} transitions done; refilling the replay buffer")
    before = evaluate_before(run, state.get("eval_before"), lambda: evaluate(sac.actor, cfg, cfg.seed + 10_000),
                             "eval/return", cfg.log.tensorboard)
    log.info(f"deterministic return before training: {before:.1f}")

    buffer = ReplayBuffer(cfg.buffer_size, sac.obs_dim, sac.act_dim)
    env_seed = cfg.seed * 1000 + job.step
    if cfg.workers == 0:
        collector = SyncCollector(cfg, env_seed)
    else:
        from trainers.sac.apt import AptCollector

        collector = AptCollector(cfg, env_seed, sac.obs_dim, sac.act_dim)
    t_loop = time.time()
    tracker = make_tracker(run, cfg.log, iterations, job.step,
                           {"charts/episodic_return": "return", "charts/SPS": "SPS"},
                           "sac" if cfg.workers == 0 else f"sac-apt x{cfg.workers}")
    recent: deque[float] = deque(maxlen=max(100, cfg.target_window))
    # updates allowed so far: max_utd (sync: 1) per transition received once the buffer is ready. A resumed run
    # starts from the restored update count (else it would wait until the refill caught up with the old count).
    budget = float(sac.updates)
    updates_at_start = sac.updates
    hit: dict | None = None  # when target_return was first reached
    stop = False
    it = job.step
    m: dict[str, float] = {}
    try:
        for it in range(job.step + 1, iterations + 1):
            t0, step0, upd0 = time.time(), global_step, sac.updates
            episodes_it: list[tuple[float, int]] = []
            while global_step < min(it * cfg.iteration_steps, cfg.total_timesteps) and not stop:
                # collect: random actions until learning starts (for the first time), then the current actor
                acting = job.resumed or global_step >= cfg.learning_starts
                ready = len(buffer) >= cfg.learning_starts
                transitions, episodes = collector.collect(sac.actor if acting else None,
                                                          block=not ready or sac.updates >= budget,
                                                          updates=sac.updates - updates_at_start)
                if transitions is not None:
                    buffer.add(transitions)
                    global_step += len(transitions)
                    if ready:
                        budget += (cfg.max_utd if cfg.workers else 1.0) * len(transitions)
                for ret, length in episodes:
                    episodes_it.append((ret, length))
                    recent.append(ret)
                    window = list(recent)[-cfg.target_window:]
                    if (hit is None and cfg.target_return is not None and len(window) == cfg.target_window
                            and np.mean(window) >= cfg.target_return):
                        hit = {"target/wall_time_s": time.time() - job.t0, "target/loop_time_s": time.time() - t_loop,
                               "target/env_steps": global_step, "target/updates": sac.updates}
                        stop = cfg.stop_at_target
                        log.info(f"target return {cfg.target_return} reached: {hit}")
                # update: one SAC iteration per pass (the sync loop gets exactly one transition per pass)
                if len(buffer) >= cfg.learning_starts and sac.updates < budget:
                    m = sac.update(buffer.sample(cfg.batch_size, sample_rng))
            # log
            dt = max(time.time() - t0, 1e-9)
            metrics = {**m, **collector.metrics(), "charts/SPS": (global_step - step0) / dt,
                       "charts/updates_per_s": (sac.updates - upd0) / dt, "charts/global_step": global_step,
                       "charts/updates": sac.updates, "charts/utd": sac.updates / max(global_step, 1)}
            if episodes_it:
                metrics["charts/episodic_return"] = float(np.mean([r for r, _ in episodes_it]))
                metrics["charts/episodic_length"] = float(np.mean([n for _, n in episodes_it]))
            tracker.log(it, metrics, force=stop)
            checkpoint(run, it, iterations, cfg.checkpoint, lambda d: write_state(d / STATE_FILE, {
                "sac": sac.state_dict(), "sample_rng": sample_rng.bit_generator.state, "iteration": it,
                "global_step": global_step, "eval_before": before}), force=stop)
            if stop:
                break
    finally:
        tracker.close()
        books = collector.close()
    loop_time = time.time() - t_loop
    after = evaluate(sac.actor, cfg, cfg.seed + 10_000)
    log.info(f"deterministic return: {before:.1f} -> {after:.1f}")
    return summarize(job, {"algo": "sac", "env": cfg.env.name, "workers": cfg.workers, "iterations": it,
                           "env_steps": global_step, "updates": sac.updates,
                           "train/episodic_return_last10": float(np.mean(list(recent)[-10:])) if recent else None,
                           "env_steps_per_s": global_step / loop_time, "updates_per_s": sac.updates / loop_time,
                           "loop_time_s": loop_time, **(hit or {"target/wall_time_s": None, "target/env_steps": None}),
                           **books},
                     "eval/return", before, after)
