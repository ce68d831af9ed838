"""PPO job config: CleanRL ppo.py defaults for classic control; the continuous-action knobs (observation
normalisation, reward scaling, the Gaussian's initial log-std) follow ppo_continuous_action.py. The action space
of `env.name` picks the policy head: Discrete -> Categorical, Box -> diagonal Gaussian."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from rl.config import JobConfig, Section


class EnvConfig(Section):
    name: str = "CartPole-v1"
    """A registered vector env (`envs.vector.ENVS`): EnvPool tasks by name, `gymnasium/<task>` for gymnasium.
    Discrete actions (CartPole-v1) or continuous ones (Pendulum-v1, Hopper-v4)."""
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
    """Minibatches per epoch (at most env.num_envs x num_steps)."""
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
    norm_obs: bool | None = None
    """Normalise observations by their running mean/std (saved in checkpoints, frozen for evaluation).
    None: on for continuous-action envs, off for discrete ones."""
    clip_obs: float = Field(10.0, gt=0)
    """Normalised observations are clipped to [-clip_obs, clip_obs]."""
    norm_reward: bool | None = None
    """Divide rewards by the running std of the discounted return (training only; episode returns are logged
    unscaled). None: on for continuous-action envs, off for discrete ones."""
    clip_reward: float = Field(10.0, gt=0)
    """Scaled rewards are clipped to [-clip_reward, clip_reward]."""
    init_log_std: float = Field(0.0, ge=-5, le=2)
    """Continuous actions: initial value of the Gaussian's state-independent, learnable log-std."""
    torch_threads: int = Field(1, ge=0)
    """Torch intra-op threads (0: torch's default). Small MLPs run fastest on one thread on our shared 2 cores."""
    eval_episodes: int = Field(10, ge=1)
    """Episodes (greedy policy) evaluated before and after training."""

    @field_validator("num_minibatches")
    @classmethod
    def _minibatches_fit_the_batch(cls, v: int, info: ValidationInfo) -> int:
        env, num_steps = info.data.get("env"), info.data.get("num_steps")
        if env is not None and num_steps is not None and v > env.num_envs * num_steps:
            raise ValueError(f"{v} minibatches do not fit a batch of env.num_envs x num_steps = "
                             f"{env.num_envs} x {num_steps} = {env.num_envs * num_steps} transitions")
        return v
