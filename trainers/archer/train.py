"""ArCHer, read top to bottom: per iteration, add the new episodes' utterance transitions to the replay buffer;
`critic_steps` critic steps (twin Q/V, fresh a_pi for the V target, soft target updates); after `warmup_iters`,
`actor_steps` token-level REINFORCE steps with the utterance advantage min(Q1,Q2)(s,a_pi) - min(V1,V2)(s) at buffer
states, a_pi re-sampled from the current policy (the engine is synced after each actor step).

Not implemented: the optional token-level baseline (the official code never released it either)."""
from __future__ import annotations

import copy

import numpy as np
import torch

from rl.zoo import resolve_model_path
from trainers.agents.context import AgentContext
from trainers.archer.buffer import ReplayBuffer, transitions
from trainers.archer.critic import DoubleCritic
from trainers.archer.loss import actor_loss, critic_loss, q_targets, soft_update, utterance_advantage


class Archer:
    def __init__(self, ctx: AgentContext):
        self.ctx, a = ctx, ctx.cfg.archer
        enc = resolve_model_path(a.critic_path, key="archer.critic_path")
        self.critic = DoubleCritic(str(enc), max_length=ctx.runner.max_context)
        self.target = copy.deepcopy(self.critic)
        self.target.requires_grad_(False)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=a.critic_lr)
        self.buffer = ReplayBuffer(a.buffer_capacity)
        self.rng = np.random.default_rng([ctx.cfg.seed, 99])
        self.intro = {}  # the critic's text of an episode's first observation, by its context ids

    def _intro(self, traj) -> str:
        return self.ctx.tok.decode(traj.steps[0].context_ids, skip_special_tokens=True)

    def update(self, trajs, it: int) -> dict:
        from trainers.agents.episodes import usable

        ctx, a = self.ctx, self.ctx.cfg.archer
        for t in usable(trajs):
            self.buffer.add(transitions(t, self._intro(t)))
        m: dict = {"archer/buffer": len(self.buffer)}
        for k in range(a.critic_steps):  # --- critic
            b = self.buffer.sample(a.batch_size, self.rng)
            _, a_pi = ctx.sample_actions([t.state_ids for t in b], seed=int(self.rng.integers(2**31)))
            states = [t.state for t in b]
            with torch.no_grad():
                _, _, v1n, v2n = self.target([t.next_state for t in b])
                q1p, q2p, _, _ = self.target(states, a_pi)
            y1, y2 = q_targets(torch.tensor([t.reward for t in b]), torch.tensor([t.done for t in b]), v1n, v2n,
                               a.gamma)
            q1, q2, v1, v2 = self.critic(states, [t.action for t in b])
            loss, cm = critic_loss(q1, q2, v1, v2, y1, y2, q1p, q2p)
            self.critic_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), 1.0)
            self.critic_opt.step()
            soft_update(self.target, self.critic, a.tau)
        m.update(cm)
        if it > a.warmup_iters:  # --- actor
            for k in range(a.actor_steps):
                b = self.buffer.sample(a.batch_size, self.rng)
                ids, texts = ctx.sample_actions([t.state_ids for t in b], seed=int(self.rng.integers(2**31)))
                with torch.no_grad():
                    q1, q2, v1, v2 = self.critic([t.state for t in b], texts)
                adv = utterance_advantage(q1, q2, v1, v2)  # [B]
                lp, mask = ctx.utterance_logprobs([t.state_ids for t in b], ids)
                loss, am = actor_loss(lp, mask, adv)
                if ctx.ref is not None:
                    with torch.no_grad():
                        ref, _ = ctx.utterance_logprobs([t.state_ids for t in b], ids, model=ctx.ref)
                    kl, km = ctx.kl_penalty(lp, ref, mask, "episode_mean")
                    loss, am = loss + kl, {**am, **km}
                am["grad_norm/policy"] = ctx.policy_step(loss)
                ctx.sync()
            m.update(am)
        return m

    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict(), "target": self.target.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "buffer": self.buffer.state_dict(),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, d: dict) -> None:
        self.critic.load_state_dict(d["critic"])
        self.target.load_state_dict(d["target"])
        self.critic_opt.load_state_dict(d["critic_opt"])
        self.buffer.load_state_dict(d["buffer"])
        self.rng.bit_generator.state = d["rng"]
