"""IPPO: independent PPO with a parameter-shared actor and a parameter-shared critic on each agent's own
observation (de Witt et al. 2020; JaxMARL's `ippo_ff_*` baselines). The update itself is `common.MarlTrainer`."""
from __future__ import annotations

from typing import Callable

from trainers.marl.common import MarlTrainer, make_trainer
from trainers.marl.config import MarlConfig


def make_ippo(cfg: MarlConfig) -> MarlTrainer:
    return make_trainer(cfg, centralized_critic=False)


def make_train(cfg: MarlConfig) -> Callable:
    """PureJaxRL entry point: a pure `train(rng) -> dict`; `jax.jit(jax.vmap(train))(keys)` trains many seeds."""
    return make_ippo(cfg).train
