"""Episodes (`rollout.types.Trajectory` from the multi_turn runner) as tensors for the trainers.

An episode is one token sequence: its last step's context (every earlier turn's generated ids and observation ids,
as the engine saw them) plus its last generated ids (`rollout.runners.multi_turn.episode_ids`). `policy_mask` marks
the generated tokens (the only ones in any loss); observation tokens are 0.

Shapes: B episodes, S = longest episode (right-padded).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout.runners.multi_turn import episode_ids
from rollout.types import Trajectory


def episode_return(traj: Trajectory) -> float:
    """Undiscounted sum of the env's rewards."""
    return float(sum(s.reward or 0.0 for s in traj.steps))


def episode_success(traj: Trajectory) -> bool:
    return any(bool(s.info.get("success")) for s in traj.steps)


def is_usable(traj: Trajectory) -> bool:
    """Whether a trainer may learn from the episode: not dropped by the env checks, at least one step."""
    return bool(traj.steps) and traj.steps[-1].info.get("end") != "dropped"


def usable(trajs: list[Trajectory]) -> list[Trajectory]:
    return [t for t in trajs if is_usable(t)]


@dataclass
class EpisodeBatch:
    input_ids: torch.Tensor  # [B, S]
    attention_mask: torch.Tensor  # [B, S]
    policy_mask: torch.Tensor  # [B, S] 1.0 at generated tokens
    turn: torch.Tensor  # [B, S] turn index of each generated token, -1 elsewhere
    behav_logprobs: torch.Tensor  # [B, S] engine log-prob of each generated token, 0 elsewhere
    versions: torch.Tensor  # [B, S] policy version of each generated token, -1 elsewhere


def collate_episodes(trajs: list[Trajectory], pad_id: int) -> EpisodeBatch:
    rows = [episode_ids(t) for t in trajs]
    B, S = len(rows), max(len(r[0]) for r in rows)
    ids = torch.full((B, S), pad_id, dtype=torch.long)  # [B, S]
    attn = torch.zeros((B, S), dtype=torch.long)
    mask = torch.zeros((B, S))
    turn = torch.full((B, S), -1, dtype=torch.long)
    behav = torch.zeros((B, S))
    vers = torch.full((B, S), -1, dtype=torch.long)
    for i, ((x, m, tr), traj) in enumerate(zip(rows, trajs)):
        n = len(x)
        ids[i, :n], attn[i, :n] = torch.tensor(x), 1
        mask[i, :n], turn[i, :n] = torch.tensor(m, dtype=torch.float32), torch.tensor(tr)
        lp = [v for s in traj.steps for v in s.logprobs]
        vv = [v for s in traj.steps for v in s.versions]
        pos = mask[i].nonzero().squeeze(-1)
        behav[i, pos], vers[i, pos] = torch.tensor(lp), torch.tensor(vv)
    return EpisodeBatch(ids, attn, mask, turn, behav, vers)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0
                   ) -> torch.Tensor:
    """[B, S] log pi(token j | tokens < j) at `temperature` (that of the behaviour log-probs) for right-padded rows
    (position 0 gets 0). Differentiable."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    logits = logits / temperature  # [B, S-1, V]
    lp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [B, S-1]
    return torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)  # [B, S]
