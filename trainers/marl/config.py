"""IPPO / MAPPO job configs (defaults after JaxMARL's MPE baselines, sized for a 2-core CPU)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rl.config import JobConfig, Section


class MarlEnvConfig(Section):
    name: str = "mpe_simple_spread"
    """A registered multi-agent env (`envs.marl.MARL_ENVS`): mpe_simple_spread, mpe_simple_reference, coin_game, switch_riddle."""
    num_envs: int = Field(16, ge=1)
    """Parallel environments per seed."""
    kwargs: dict[str, Any] = {}
    """Constructor overrides passed to the JaxMARL env (e.g. {num_agents: 4} for switch_riddle)."""


class MarlConfig(JobConfig):
    """Shared by IPPO and MAPPO; they differ only in what the critic sees (own observation vs world state)."""

    algo: Literal["ippo", "mappo"] = "ippo"
    """ippo: critic on each agent's observation; mappo: centralised critic on the world state."""
    env: MarlEnvConfig = MarlEnvConfig()
    """Environment."""
    num_seeds: int = Field(1, ge=1)
    """Independent training runs vmapped in one job, with seeds seed, seed+1, ..., seed+num_seeds-1."""
    total_timesteps: int = Field(1_000_000, ge=1)
    """Environment steps to train for, per seed (all envs together; one step moves every agent)."""
    num_steps: int = Field(128, ge=1)
    """Steps per env per rollout; a batch is num_steps x num_envs x agents samples."""
    lr: float = Field(2.5e-3, gt=0)
    """Adam learning rate (linearly annealed to 0 when anneal_lr)."""
    anneal_lr: bool = True
    """Linearly anneal the learning rate over training."""
    gamma: float = Field(0.99, ge=0, le=1)
    """Discount."""
    gae_lambda: float = Field(0.95, ge=0, le=1)
    """GAE lambda."""
    update_epochs: int = Field(4, ge=1)
    """Epochs over each batch."""
    num_minibatches: int = Field(4, ge=1)
    """Minibatches per epoch (must divide num_steps x num_envs x agents)."""
    clip_eps: float = Field(0.2, gt=0)
    """PPO clipping epsilon (policy ratio and value change)."""
    ent_coef: float = Field(0.01, ge=0)
    """Entropy bonus weight."""
    vf_coef: float = Field(0.5, ge=0)
    """Value loss weight."""
    max_grad_norm: float = Field(0.5, gt=0)
    """Global gradient-norm clip."""
    hidden: int = Field(64, ge=1)
    """Width of the two hidden layers of the actor and of the critic."""
    activation: Literal["tanh", "relu"] = "tanh"
    """Hidden activation."""
    segment_updates: int = Field(10, ge=1)
    """PPO updates per jitted call; the progress bar, metric rows and checkpoints happen between segments."""
    eval_envs: int = Field(64, ge=1)
    """Envs whose first episode (sampled policy) gives the initial and final return in the summary."""


class IPPOConfig(MarlConfig):
    algo: Literal["ippo"] = "ippo"
    """Which job to run."""


class MAPPOConfig(MarlConfig):
    algo: Literal["mappo"] = "mappo"
    """Which job to run."""
