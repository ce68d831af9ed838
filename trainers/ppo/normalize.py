"""Observation normalisation and reward scaling for PPO on continuous control (what CleanRL's
ppo_continuous_action.py gets from gym's NormalizeObservation / NormalizeReward wrappers), written in numpy.

Both keep running statistics over the training stream and are saved in checkpoints (`state_dict`), so a resumed
run and the greedy evaluation see observations on the same scale as the policy was trained on. Evaluation
normalises with frozen statistics (`update=False`). A disabled normaliser passes its input through (as float32)
and keeps no statistics.
"""
from __future__ import annotations

import numpy as np


class RunningMeanStd:
    """Mean and (population) variance of every sample seen so far, updated a batch [B, *shape] at a time by the
    parallel-variance merge (Chan et al.). Starts from mean 0, var 1 with a pseudo-count `epsilon`, as gym does;
    with epsilon=0 it equals numpy's mean/var over all the data."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = float(epsilon)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, *self.mean.shape)  # [B, *shape]
        b_mean, b_var, b_count = x.mean(0), x.var(0), x.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total  # summed sq. deviations
        self.mean = self.mean + delta * b_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, s: dict) -> None:
        self.mean, self.var, self.count = np.array(s["mean"], np.float64), np.array(s["var"], np.float64), float(s["count"])


class ObsNormalizer:
    """obs -> clip((obs - mean) / sqrt(var + eps), -clip, clip) with the running mean/var of every observation the
    training envs returned."""

    def __init__(self, shape: tuple[int, ...], clip: float, enabled: bool, eps: float = 1e-8):
        self.enabled, self.clip, self.eps = enabled, clip, eps
        self.rms = RunningMeanStd(shape)

    def __call__(self, obs: np.ndarray, update: bool = True) -> np.ndarray:
        if not self.enabled:
            return np.asarray(obs, np.float32)
        if update:
            self.rms.update(obs)
        z = (np.asarray(obs, np.float64) - self.rms.mean) / np.sqrt(self.rms.var + self.eps)  # [N, *shape]
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"enabled": self.enabled, "rms": self.rms.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        """Restore the statistics (the caller checks that `enabled` matches the checkpoint's)."""
        self.rms.load_state_dict(s["rms"])


class RewardScaler:
    """reward -> clip(reward / sqrt(var(G) + eps), -clip, clip), G the running discounted return of each env
    (G <- gamma G + r, reset to 0 when the episode ends); the mean is not subtracted (that would change which
    states are good). `num_envs` running returns are not saved: a resumed run re-seeds its envs anyway."""

    def __init__(self, num_envs: int, gamma: float, clip: float, enabled: bool, eps: float = 1e-8):
        self.enabled, self.gamma, self.clip, self.eps = enabled, gamma, clip, eps
        self.rms = RunningMeanStd(())
        self.ret = np.zeros(num_envs, np.float64)  # [N]

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return np.asarray(reward, np.float32)
        self.ret = self.ret * self.gamma + reward
        self.rms.update(self.ret)
        self.ret[np.asarray(done, bool)] = 0.0
        return np.clip(reward / np.sqrt(self.rms.var + self.eps), -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"enabled": self.enabled, "rms": self.rms.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        """Restore the statistics (the caller checks that `enabled` matches the checkpoint's)."""
        self.rms.load_state_dict(s["rms"])
