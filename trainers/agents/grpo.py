"""Multi-turn GRPO (the peers' baseline): G episodes per env seed, the advantage of an episode is its return
normalised within its group, and every policy token of the episode is trained with it (`grpo.epochs` clipped-ratio
steps per iteration on the whole batch; + `policy.kl_coef` x k3 KL to the initial policy)."""
from __future__ import annotations

import torch

from trainers.advantages import grpo_advantage
from trainers.agents.context import AgentContext
from trainers.agents.episodes import collate_episodes, episode_return, is_usable, token_logprobs
from trainers.agents.loss import grpo_episode_loss


class AgentGRPO:
    def __init__(self, ctx: AgentContext):
        self.ctx = ctx

    def update(self, trajs, it: int) -> dict:
        ctx, g = self.ctx, self.ctx.cfg.grpo
        valid = torch.tensor([is_usable(t) for t in trajs])  # [B] dropped episodes are not in any group
        returns = torch.tensor([episode_return(t) if v else 0.0 for t, v in zip(trajs, valid)])  # [B]
        groups = torch.arange(len(trajs)) // g.group_size  # [B] group-contiguous (seeds() repeats each seed G times)
        adv = grpo_advantage(returns, groups, valid)  # [B]
        keep = [i for i in range(len(trajs)) if valid[i] and adv[i] != 0]
        if not keep:
            return {"loss/policy": 0.0, "grpo/zero_adv_frac": 1.0}
        b = collate_episodes([trajs[i] for i in keep], ctx.engine.pad_id)
        ref = prox = None
        if ctx.ref is not None:
            with torch.no_grad():
                ref = token_logprobs(ctx.ref, b.input_ids, b.attention_mask, ctx.cfg.rollout.temperature)  # [K, S]
        for _ in range(g.epochs):
            lp = token_logprobs(ctx.policy, b.input_ids, b.attention_mask, ctx.cfg.rollout.temperature)  # [K, S]
            prox = lp.detach() if prox is None else prox  # the policy before this batch's first step
            loss, m = grpo_episode_loss(lp, b.behav_logprobs, adv[keep], b.policy_mask, g.clip_eps, g.loss_agg,
                                        correction=g.offpolicy, settings=g, prox_logprobs=prox)
            if ref is not None:
                kl, km = ctx.kl_penalty(lp, ref, b.policy_mask, g.loss_agg)
                loss, m = loss + kl, {**m, **km}
            m["grad_norm/policy"] = ctx.policy_step(loss)
        ctx.sync()
        m["grpo/zero_adv_frac"] = 1 - len(keep) / len(trajs)
        return m

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass
