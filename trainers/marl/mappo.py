"""MAPPO: PPO with a parameter-shared actor on each agent's observation and a centralised critic on the world
state (all agents' observations plus the agent's one-hot id; Yu et al. 2022, JaxMARL's `mappo_*` baselines).
The update itself is `common.MarlTrainer`; only the critic's input differs from IPPO."""
from __future__ import annotations

from typing import Callable

from trainers.marl.common import MarlTrainer, make_trainer
from trainers.marl.config import MarlConfig


def make_mappo(cfg: MarlConfig) -> MarlTrainer:
    return make_trainer(cfg, centralized_critic=True)


def make_train(cfg: MarlConfig) -> Callable:
    """PureJaxRL entry point: a pure `train(rng) -> dict`; `jax.jit(jax.vmap(train))(keys)` trains many seeds."""
    return make_mappo(cfg).train
