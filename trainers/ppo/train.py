"""PPO for vector envs, CleanRL style (ppo.py; ppo_continuous_action.py for Box actions): read top to bottom.

rollout (num_steps x num_envs) -> GAE -> update_epochs x minibatches of clipped PPO -> log/checkpoint.
Our envs auto-reset on the step after an episode ends (envs/vector.py); that step is left out of the update
(`minibatches`), since its action did nothing.
The env's action space picks the policy head: Discrete -> Categorical over logits; Box -> diagonal Gaussian with
a state-independent learnable log-std, sampled actions clipped to the bounds when stepping the env (the log-prob
is of the unclipped sample, which is what the buffer keeps). Observations can be normalised and rewards scaled
by running statistics (`trainers/ppo/normalize.py`; on by default for Box actions), saved with the checkpoint.
Greedy evaluation takes the argmax / the Gaussian's mean.

Resume restores the agent, optimizer, normalisers, RNG and step counters; the environments are re-seeded from
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
from rl.errors import ConfigError
from rl.jobkit import checkpoint, evaluate_before, make_tracker, start, summarize, write_state
from rl.rundir import RunDir
from trainers.advantages import gae
from trainers.ppo.config import PPOConfig
from trainers.ppo.loss import gaussian_entropy, gaussian_log_prob, ppo_policy_loss, value_loss
from trainers.ppo.normalize import ObsNormalizer, RewardScaler

log = logging.getLogger("orchard")

STATE_FILE = "state.pt"  # in every checkpoint: agent, optimizer, normalisers, RNG, iteration, eval_before


def layer(i: int, o: int, std: float = np.sqrt(2)) -> nn.Linear:
    lin = nn.Linear(i, o)
    nn.init.orthogonal_(lin.weight, std)
    nn.init.constant_(lin.bias, 0.0)
    return lin


class Agent(nn.Module):
    """Critic and actor MLPs. Discrete: the actor outputs logits [B, n]. Continuous (`continuous=True`): the actor
    outputs the Gaussian's mean [B, A] and `log_std` [A] is a free parameter."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, continuous: bool = False, init_log_std: float = 0.0):
        super().__init__()
        self.continuous = continuous
        self.critic = nn.Sequential(layer(obs_dim, hidden), nn.Tanh(), layer(hidden, hidden), nn.Tanh(), layer(hidden, 1, 1.0))
        self.actor = nn.Sequential(layer(obs_dim, hidden), nn.Tanh(), layer(hidden, hidden), nn.Tanh(),
                                   layer(hidden, act_dim, 0.01))
        if continuous:
            self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def value(self, x):
        return self.critic(x).squeeze(-1)

    def act(self, x, action=None):
        """(action, log-prob [B], entropy [B], value [B]); samples the action if none is given."""
        if not self.continuous:
            dist = torch.distributions.Categorical(logits=self.actor(x))
            if action is None:
                action = dist.sample()  # [B]
            return action, dist.log_prob(action), dist.entropy(), self.value(x)
        mean = self.actor(x)  # [B, A]
        log_std = self.log_std.expand_as(mean)  # [B, A]
        if action is None:
            action = mean + log_std.exp() * torch.randn_like(mean)  # [B, A]
        return action, gaussian_log_prob(mean, log_std, action), gaussian_entropy(log_std), self.value(x)

    def greedy(self, x):
        """The evaluation action: the argmax of the logits, or the Gaussian's mean."""
        out = self.actor(x)
        return out if self.continuous else out.argmax(-1)


def env_spaces(name: str, seed: int) -> tuple[int, int, np.ndarray | None, np.ndarray | None]:
    """(obs_dim, act_dim or number of actions, low, high) of env `name`; the bounds are None for discrete actions."""
    probe = make_vec_env(name, 1, seed)
    obs_space, space = probe.single_observation_space, probe.single_action_space
    probe.close()
    obs_dim = int(np.prod(obs_space.shape))
    if hasattr(space, "n"):
        return obs_dim, int(space.n), None, None
    if hasattr(space, "low") and len(space.shape) == 1:
        return obs_dim, space.shape[0], np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    raise ConfigError(f"env.name: PPO needs Discrete or 1-D Box actions, {name} has {space}")


@torch.no_grad()
def evaluate(agent: Agent, obs_norm: ObsNormalizer, cfg: PPOConfig, seed: int, low=None, high=None) -> float:
    """Mean return of the greedy policy over cfg.eval_episodes episodes (observations normalised with the frozen
    training statistics, continuous actions clipped to [low, high])."""
    env = make_vec_env(cfg.env.name, min(cfg.eval_episodes, 8), seed)
    obs, _ = env.reset()
    stats = EpisodeStats(env.num_envs)
    returns: list[float] = []
    while len(returns) < cfg.eval_episodes:
        a = agent.greedy(torch.from_numpy(obs_norm(obs, update=False))).numpy()
        if agent.continuous:
            a = np.clip(a, low, high)
        obs, r, term, trunc, _ = env.step(a)
        stats.update(r, term, trunc)
        returns += [ret for ret, _ in stats.pop()]
    env.close()
    return float(np.mean(returns[: cfg.eval_episodes]))


def minibatches(resets: torch.Tensor, num_minibatches: int) -> list[torch.Tensor]:
    """One epoch's minibatches: a random permutation of the flat indices of the real transitions, split into
    `num_minibatches` near-equal parts. `resets` ([T, N], 1 where the step is an auto-reset step: its env ended on the
    previous step, so it ignored the action, gave reward 0 and returned the next episode's first observation) marks
    what is left out: such a step is no transition of the MDP, and its action's advantage is noise."""
    real = (resets.reshape(-1) == 0).nonzero().squeeze(1)
    return list(torch.tensor_split(real[torch.randperm(len(real))], num_minibatches))


def build_agent(cfg: PPOConfig, obs_dim: int, act_dim: int, continuous: bool):
    """The agent and the two normalisers as `cfg` describes them (fresh)."""
    agent = Agent(obs_dim, act_dim, cfg.hidden, continuous, cfg.init_log_std)
    obs_norm = ObsNormalizer((obs_dim,), cfg.clip_obs, continuous if cfg.norm_obs is None else cfg.norm_obs)
    reward_scale = RewardScaler(cfg.env.num_envs, cfg.gamma, cfg.clip_reward,
                                continuous if cfg.norm_reward is None else cfg.norm_reward)
    return agent, obs_norm, reward_scale


def load_agent(state: dict, ckpt, agent: Agent, obs_norm: ObsNormalizer, reward_scale: RewardScaler) -> None:
    """Restore the agent and normalisers from a checkpoint's state.pt (`ckpt`: its directory, for errors)."""
    agent.load_state_dict(state["agent"])
    for key, norm in (("norm_obs", obs_norm), ("norm_reward", reward_scale)):
        saved = state.get(key, {"enabled": False})  # checkpoints from before the normalisers: both off
        if saved["enabled"] != norm.enabled:
            raise ConfigError(f"{key}: the checkpoint in {ckpt} was trained with {key}={saved['enabled']}, "
                              f"this config resolves it to {norm.enabled}; use {key}={saved['enabled']}")
        if norm.enabled:
            norm.load_state_dict(saved)


def evaluate_checkpoint(cfg: PPOConfig, ckpt) -> dict:
    """`rl eval` of a PPO run: the greedy return of the checkpoint's agent on the held-out seed the run's own final
    evaluation uses (so a finished run's last checkpoint gives its summary's eval/return_after)."""
    if ckpt is None:
        raise ConfigError("rl eval: a PPO policy is evaluated from a run directory with a complete checkpoint")
    obs_dim, act_dim, low, high = env_spaces(cfg.env.name, cfg.seed)
    agent, obs_norm, reward_scale = build_agent(cfg, obs_dim, act_dim, low is not None)
    load_agent(torch.load(ckpt / STATE_FILE, weights_only=False), ckpt, agent, obs_norm, reward_scale)
    t0 = time.time()
    ret = evaluate(agent, obs_norm, cfg, cfg.seed + 10_000, low, high)
    return {"algo": "ppo", "env": cfg.env.name, "checkpoint": str(ckpt), "policy": "greedy",
            "episodes": cfg.eval_episodes, "seed": cfg.seed + 10_000, "eval/return": ret, "eval_time_s": time.time() - t0}


def train(cfg: PPOConfig, run: RunDir) -> dict:
    job = start(run, cfg.seed, cfg.torch_threads)
    batch_size = cfg.env.num_envs * cfg.num_steps
    iterations = max(1, cfg.total_timesteps // batch_size)
    obs_dim, act_dim, low, high = env_spaces(cfg.env.name, cfg.seed)
    continuous = low is not None
    agent, obs_norm, reward_scale = build_agent(cfg, obs_dim, act_dim, continuous)
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5)
    state = job.load_state(STATE_FILE)
    if job.resumed:
        load_agent(state, job.path, agent, obs_norm, reward_scale)
        opt.load_state_dict(state["optimizer"])
    before = evaluate_before(run, state.get("eval_before"),
                             lambda: evaluate(agent, obs_norm, cfg, cfg.seed + 10_000, low, high),
                             "eval/return", cfg.log.tensorboard)
    log.info(f"greedy return before training: {before:.1f}")

    env = make_vec_env(cfg.env.name, cfg.env.num_envs, cfg.seed * 1000 + job.step)
    stats = EpisodeStats(env.num_envs)
    N, T = cfg.env.num_envs, cfg.num_steps
    act_shape = (act_dim,) if continuous else ()
    obs_buf = torch.zeros((T, N, obs_dim))  # [T, N, obs]
    act_buf = torch.zeros((T, N, *act_shape), dtype=torch.float32 if continuous else torch.long)  # [T, N(, A)]
    logp_buf, rew_buf, done_buf, val_buf = (torch.zeros((T, N)) for _ in range(4))
    obs_np, _ = env.reset()
    next_obs, next_done = torch.from_numpy(obs_norm(obs_np)), torch.zeros(N)
    tracker = make_tracker(run, cfg.log, iterations, job.step,
                           {"charts/episodic_return": "return", "charts/SPS": "SPS"}, "ppo")
    recent: list[float] = []
    t_loop = time.time()
    try:
        for it in range(job.step + 1, iterations + 1):
            t0 = time.time()
            if cfg.anneal_lr:
                opt.param_groups[0]["lr"] = cfg.lr * (1.0 - (it - 1) / iterations)
            # rollout: the buffer keeps normalised observations, the unclipped actions and scaled rewards
            for t in range(T):
                obs_buf[t], done_buf[t] = next_obs, next_done
                with torch.no_grad():
                    action, logp, _, value = agent.act(next_obs)
                act_buf[t], logp_buf[t], val_buf[t] = action, logp, value
                step_action = np.clip(action.numpy(), low, high) if continuous else action.numpy()
                obs_np, r, term, trunc, _ = env.step(step_action)
                stats.update(r, term, trunc)  # unscaled episode returns
                done = np.logical_or(term, trunc)
                rew_buf[t] = torch.from_numpy(reward_scale(r, done))
                next_obs = torch.from_numpy(obs_norm(obs_np))
                next_done = torch.as_tensor(done, dtype=torch.float32)
            with torch.no_grad():
                adv, ret = gae(rew_buf, val_buf, done_buf, agent.value(next_obs), next_done, cfg.gamma, cfg.gae_lambda)
            # update
            b_obs, b_act, b_logp = obs_buf.reshape(-1, obs_dim), act_buf.reshape(-1, *act_shape), logp_buf.reshape(-1)
            b_adv, b_ret, b_val = adv.reshape(-1), ret.reshape(-1), val_buf.reshape(-1)
            m: dict[str, float] = {}
            for _ in range(cfg.update_epochs):
                for idx in minibatches(done_buf, cfg.num_minibatches):  # done_buf[t]: step t auto-resets its env
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
                      "charts/global_step": it * batch_size, "charts/autoreset_frac": done_buf.mean().item()})
            if continuous:
                m["charts/action_std"] = agent.log_std.exp().mean().item()
            episodes = stats.pop()
            if episodes:
                recent = ([r for r, _ in episodes] + recent)[:100]
                m["charts/episodic_return"] = float(np.mean([r for r, _ in episodes]))
                m["charts/episodic_length"] = float(np.mean([n for _, n in episodes]))
            tracker.log(it, m)
            checkpoint(run, it, iterations, cfg.checkpoint, lambda d: write_state(d / STATE_FILE, {
                "agent": agent.state_dict(), "optimizer": opt.state_dict(), "norm_obs": obs_norm.state_dict(),
                "norm_reward": reward_scale.state_dict(), "iteration": it, "eval_before": before}))
    finally:
        tracker.close()
        env.close()
    loop_time = time.time() - t_loop
    after = evaluate(agent, obs_norm, cfg, cfg.seed + 10_000, low, high)
    log.info(f"greedy return: {before:.1f} -> {after:.1f}")
    return summarize(job, {"algo": "ppo", "env": cfg.env.name, "iterations": iterations,
                           "env_steps": iterations * batch_size,
                           "train/episodic_return_last100": float(np.mean(recent)) if recent else None,
                           "env_steps_per_s": (iterations - job.step) * batch_size / loop_time,
                           "loop_time_s": loop_time},
                     "eval/return", before, after)
