"""One env stepped with a policy, producing replay transitions. The sync loop runs one in-process; each APT
worker (trainers/sac/apt.py) runs one inside a Ray actor.

Our vector envs auto-reset on the step *after* an episode ends (envs/vector.py): that step ignores the action
and returns the new first observation, so it is not a transition and is not stored (nor counted).
"""
from __future__ import annotations

import numpy as np
import torch

from envs.vector import EpisodeStats, action_bounds, make_vec_env
from trainers.sac.buffer import Transitions
from trainers.sac.nets import Actor


class EnvRunner:
    def __init__(self, env_name: str, seed: int):
        self.env = make_vec_env(env_name, 1, seed)
        self.low, self.high = action_bounds(self.env)
        self.rng = np.random.default_rng(seed)  # random actions before learning starts
        obs, _ = self.env.reset()
        self.obs = np.asarray(obs, np.float32)  # [1, obs_dim]
        self.resetting = False  # the next env step is an auto-reset step
        self.stats = EpisodeStats(1)
        self.stepped = 0  # transitions produced so far (auto-reset steps excluded)

    @torch.no_grad()
    def run(self, actor: Actor | None, n: int) -> tuple[Transitions, list[tuple[float, int]]]:
        """Step until n transitions are collected, acting with `actor` (sampled) or uniformly at random if None.
        Returns the transitions and the (return, length) of episodes that ended."""
        obs, acts, rews, nxt, terms = [], [], [], [], []
        while len(rews) < n:
            if actor is None:
                action = self.rng.uniform(self.low, self.high).astype(np.float32)[None]  # [1, A]
            else:
                action = actor.sample(torch.from_numpy(self.obs))[0].numpy()  # [1, A]
            next_obs, r, term, trunc, _ = self.env.step(action)
            next_obs = np.asarray(next_obs, np.float32)
            self.stats.update(r, term, trunc)
            if not self.resetting:
                obs.append(self.obs[0]), acts.append(action[0]), rews.append(float(r[0]))
                nxt.append(next_obs[0]), terms.append(float(term[0]))
            self.resetting = bool(term[0] or trunc[0])
            self.obs = next_obs
        self.stepped += n
        t = Transitions(np.stack(obs), np.stack(acts).astype(np.float32), np.asarray(rews, np.float32), np.stack(nxt),
                        np.asarray(terms, np.float32))
        return t, self.stats.pop()

    def close(self) -> None:
        self.env.close()
