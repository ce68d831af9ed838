"""SAC networks (CleanRL sac_continuous_action.py): a tanh-squashed Gaussian actor and a Q network, ReLU MLPs."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainers.sac.loss import squashed_gaussian

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class SoftQ(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim + act_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], -1)).squeeze(-1)  # [B]


class Actor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int, low: np.ndarray, high: np.ndarray):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.fc_mean = nn.Linear(hidden, act_dim)
        self.fc_logstd = nn.Linear(hidden, act_dim)
        self.register_buffer("action_scale", torch.as_tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.as_tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        log_std = torch.tanh(self.fc_logstd(h))  # squash into [LOG_STD_MIN, LOG_STD_MAX]
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)
        return self.fc_mean(h), log_std  # [B, A] each

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action [B, A], log pi [B]) with the reparameterisation trick."""
        mean, log_std = self(obs)
        return squashed_gaussian(mean, log_std, torch.randn_like(mean), self.action_scale, self.action_bias)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """tanh(mean) rescaled to the action bounds: the evaluation policy."""
        return torch.tanh(self(obs)[0]) * self.action_scale + self.action_bias
