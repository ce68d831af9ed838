"""PPO job config (CleanRL ppo.py defaults for classic control)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from rl.config import JobConfig, Section


class EnvConfig(Section):
    name: str = "CartPole-v1"
    """A registered vector env (`envs.vector.ENVS`): EnvPool tasks by name, `gymnasium/<task>` for gymnasium."""
    num_envs: int = Field(8, ge=1)
    """Parallel environments."""


class PPOConfig(JobConfig):
    algo: Literal["ppo"] = "ppo"
    """Which job to run."""
    env: EnvConfig = EnvConfig()
    """Environment."""
    total_timesteps: int = Field(300_000, ge=1)
    """Environment steps to train for (all envs together)."""
    num_steps: int = Field(128, ge=1)
    """Steps per env per rollout; a batch is num_envs x num_steps transitions."""
    lr: float = Field(2.5e-4, gt=0)
    """Adam learning rate (linearly annealed to 0 when anneal_lr)."""
    anneal_lr: bool = True
    """Linearly anneal the learning rate over training."""
    gamma: float = Field(0.99, ge=0, le=1)
    """Discount."""
    gae_lambda: float = Field(0.95, ge=0, le=1)
    """GAE lambda."""
    num_minibatches: int = Field(4, ge=1)
    """Minibatches per epoch."""
    update_epochs: int = Field(4, ge=1)
    """Epochs over each batch."""
    clip_coef: float = Field(0.2, gt=0)
    """Surrogate clipping epsilon."""
    clip_vloss: bool = True
    """Clip the value loss like the policy."""
    ent_coef: float = Field(0.01, ge=0)
    """Entropy bonus weight."""
    vf_coef: float = Field(0.5, ge=0)
    """Value loss weight."""
    max_grad_norm: float = Field(0.5, gt=0)
    """Gradient clipping norm."""
    hidden: int = Field(64, ge=1)
    """Width of the two tanh hidden layers of the actor and the critic."""
    eval_episodes: int = Field(10, ge=1)
    """Episodes (greedy policy) evaluated before and after training."""
