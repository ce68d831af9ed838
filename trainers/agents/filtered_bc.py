"""Filtered behaviour cloning (ArCHer's cheapest baseline): keep the top fraction of each iteration's episodes by
return and maximise the likelihood of their utterances."""
from __future__ import annotations

import torch

from trainers.agents.context import AgentContext
from trainers.agents.episodes import collate_episodes, episode_return, token_logprobs, usable
from trainers.agents.loss import bc_loss, top_fraction


class FilteredBC:
    def __init__(self, ctx: AgentContext):
        self.ctx = ctx

    def update(self, trajs, it: int) -> dict:
        ctx, c = self.ctx, self.ctx.cfg.bc
        trajs = usable(trajs)
        kept = [trajs[i] for i in top_fraction(torch.tensor([episode_return(t) for t in trajs]), c.top_fraction)]
        b = collate_episodes(kept, ctx.engine.pad_id)
        for _ in range(c.steps):
            loss, m = bc_loss(token_logprobs(ctx.policy, b.input_ids, b.attention_mask, ctx.cfg.rollout.temperature),
                              b.policy_mask)
            m["grad_norm/policy"] = ctx.policy_step(loss)
        ctx.sync()
        m["bc/kept_return"] = sum(map(episode_return, kept)) / len(kept)
        return m

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass
