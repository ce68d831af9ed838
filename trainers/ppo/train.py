"""PPO for discrete-action vector envs, CleanRL style: read top to bottom.

rollout (num_steps x num_envs) -> GAE -> update_epochs x minibatches of clipped PPO -> log/checkpoint.
Resume restores the agent, optimizer, RNG and step counters; the environments are re-seeded from
(seed, iteration) because EnvPool's C++ state cannot be saved, so a resumed run continues the same training
but not bit-identically to an uninterrupted one.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn

from envs.vector import EpisodeStats, make_vec_env
from rl.progress import Tracker
from rl.rundir import RunDir
from rl.seeding import rng_state, seed_everything, set_rng_state
from trainers.advantages import gae
from trainers.ppo.config import PPOConfig
from trainers.ppo.loss import ppo_policy_loss, value_loss

log = logging.getLogger("orchard")


def layer(i: int, o: int, std: float = np.sqrt(2)) -> nn.Linear:
    lin = nn.Linear(i, o)
    nn.init.orthogonal_(lin.weight, std)
    nn.init.constant_(lin.bias, 0.0)
    return lin


class Agent(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__()
        self.critic = nn.Sequential(layer(obs_dim, hidden), nn.Tanh(), layer(hidden, hidden), nn.Tanh(), layer(hidden, 1, 1.0))
        self.actor = nn.Sequential(layer(obs_dim, hidden), nn.Tanh(), layer(hidden, hidden), nn.Tanh(),
                                   layer(hidden, n_actions, 0.01))

    def value(self, x):
        return self.critic(x).squeeze(-1)

    def act(self, x, action=None):
        dist = torch.distributions.Categorical(logits=self.actor(x))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.value(x)


@torch.no_grad()
def evaluate(agent: Agent, cfg: PPOConfig, seed: int) -> float:
    """Mean return of the greedy policy over cfg.eval_episodes episodes."""
    env = make_vec_env(cfg.env.name, min(cfg.eval_episodes, 8), seed)
    obs, _ = env.reset()
    stats = EpisodeStats(env.num_envs)
    returns: list[float] = []
    while len(returns) < cfg.eval_episodes:
        a = agent.actor(torch.as_tensor(obs, dtype=torch.float32)).argmax(-1).numpy()
        obs, r, term, trunc, _ = env.step(a)
        stats.update(r, term, trunc)
        returns += [ret for ret, _ in stats.pop()]
    env.close()
    return float(np.mean(returns[: cfg.eval_episodes]))


def train(cfg: PPOConfig, run: RunDir) -> dict:
    t_start = time.time()
    seed_everything(cfg.seed)
    batch_size = cfg.env.num_envs * cfg.num_steps
    minibatch = batch_size // cfg.num_minibatches
    iterations = max(1, cfg.total_timesteps // batch_size)
    probe = make_vec_env(cfg.env.name, 1, cfg.seed)
    obs_dim, n_actions = int(np.prod(probe.single_observation_space.shape)), int(probe.single_action_space.n)
    probe.close()
    agent = Agent(obs_dim, n_actions, cfg.hidden)
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5)

    start, before = 0, None
    latest = run.latest_checkpoint()
    if latest is not None:
        state = torch.load(latest[1] / "state.pt", weights_only=False)
        agent.load_state_dict(state["agent"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start, before = state["iteration"], state["eval_before"]
        run.truncate_metrics(start)
        log.info(f"resumed from {latest[1]} at iteration {start}")
    if before is None:
        before = evaluate(agent, cfg, cfg.seed + 10_000)
        run.log_metrics(0, {"eval/return": before}, tensorboard=cfg.log.tensorboard)
    log.info(f"greedy return before training: {before:.1f}")

    env = make_vec_env(cfg.env.name, cfg.env.num_envs, cfg.seed * 1000 + start)
    stats = EpisodeStats(env.num_envs)
    N, T = cfg.env.num_envs, cfg.num_steps
    obs_buf = torch.zeros((T, N, obs_dim))  # [T, N, obs]
    act_buf = torch.zeros((T, N), dtype=torch.long)
    logp_buf, rew_buf, done_buf, val_buf = (torch.zeros((T, N)) for _ in range(4))
    obs_np, _ = env.reset()
    next_obs, next_done = torch.as_tensor(obs_np, dtype=torch.float32), torch.zeros(N)
    tracker = Tracker(run, iterations, start, show={"charts/episodic_return": "return", "charts/SPS": "SPS"},
                      progress=cfg.log.progress, tensorboard=cfg.log.tensorboard, every=cfg.log.every, desc="ppo")
    recent: list[float] = []
    try:
        for it in range(start + 1, iterations + 1):
            t0 = time.time()
            if cfg.anneal_lr:
                opt.param_groups[0]["lr"] = cfg.lr * (1.0 - (it - 1) / iterations)
            # rollout
            for t in range(T):
                obs_buf[t], done_buf[t] = next_obs, next_done
                with torch.no_grad():
                    action, logp, _, value = agent.act(next_obs)
                act_buf[t], logp_buf[t], val_buf[t] = action, logp, value
                obs_np, r, term, trunc, _ = env.step(action.numpy())
                stats.update(r, term, trunc)
                rew_buf[t] = torch.as_tensor(r, dtype=torch.float32)
                next_obs = torch.as_tensor(obs_np, dtype=torch.float32)
                next_done = torch.as_tensor(np.logical_or(term, trunc), dtype=torch.float32)
            with torch.no_grad():
                adv, ret = gae(rew_buf, val_buf, done_buf, agent.value(next_obs), next_done, cfg.gamma, cfg.gae_lambda)
            # update
            b_obs, b_act, b_logp = obs_buf.reshape(-1, obs_dim), act_buf.reshape(-1), logp_buf.reshape(-1)
            b_adv, b_ret, b_val = adv.reshape(-1), ret.reshape(-1), val_buf.reshape(-1)
            m: dict[str, float] = {}
            for _ in range(cfg.update_epochs):
                perm = torch.randperm(batch_size)
                for s in range(0, batch_size, minibatch):
                    idx = perm[s:s + minibatch]
                    _, new_logp, entropy, new_val = agent.act(b_obs[idx], b_act[idx])
                    pg, pm = ppo_policy_loss(new_logp, b_logp[idx], b_adv[idx], cfg.clip_coef)
                    v = value_loss(new_val, b_val[idx], b_ret[idx], cfg.clip_coef if cfg.clip_vloss else None)
                    loss = pg - cfg.ent_coef * entropy.mean() + cfg.vf_coef * v
                    opt.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                    opt.step()
            m.update({"losses/policy_loss": pg.item(), "losses/value_loss": v.item(), "losses/entropy": entropy.mean().item(),
                      **pm, "charts/learning_rate": opt.param_groups[0]["lr"], "charts/SPS": batch_size / (time.time() - t0),
                      "charts/global_step": it * batch_size})
            episodes = stats.pop()
            if episodes:
                recent = ([r for r, _ in episodes] + recent)[:100]
                m["charts/episodic_return"] = float(np.mean([r for r, _ in episodes]))
                m["charts/episodic_length"] = float(np.mean([n for _, n in episodes]))
            tracker.log(it, m)
            if it == iterations or (cfg.checkpoint.every and it % cfg.checkpoint.every == 0):
                with run.checkpoint_writer(it, keep=cfg.checkpoint.keep) as d:
                    torch.save({"agent": agent.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(),
                                "iteration": it, "eval_before": before}, d / "state.pt")
    finally:
        tracker.close()
        env.close()
    after = evaluate(agent, cfg, cfg.seed + 10_000)
    log.info(f"greedy return: {before:.1f} -> {after:.1f}")
    return {"algo": "ppo", "env": cfg.env.name, "iterations": iterations, "env_steps": iterations * batch_size,
            "eval/return_before": before, "eval/return_after": after,
            "train/episodic_return_last100": float(np.mean(recent)) if recent else None,
            "wall_time_s": time.time() - t_start}
