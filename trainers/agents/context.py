"""What every agent trainer works with: the policy (trainer copy + optimizer), an in-process engine serving it
(evaluation, ArCHer's fresh utterances), the multi-turn runners of the training and evaluation envs (the training
one runs on the rollout workers: `trainers/agents/rollouts.py`), and the operations on them (sync weights,
evaluate on the fixed held-out episodes)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rl.zoo import resolve_model_path
from rollout.hf_engine import HFEngine
from rollout.logprobs import left_pad, policy_logprobs
from rollout.runners.multi_turn import MultiTurnRunner
from rollout.types import SamplingParams
from trainers.agents.config import AgentConfig
from trainers.agents.evaluate import evaluate_agent

EVAL_SEED0 = 10**6
"""Held-out episodes use seeds EVAL_SEED0 + i; training seeds are drawn below it."""
AGG = {"episode_mean": "seq_mean_token_mean", "token_mean": "token_mean"}
"""The agent losses' aggregation names -> `trainers.grpo.loss.aggregate`'s."""


@dataclass
class AgentContext:
    cfg: AgentConfig
    model_dir: Path
    policy: torch.nn.Module
    opt: torch.optim.Optimizer
    engine: HFEngine
    runner: MultiTurnRunner
    eval_runner: MultiTurnRunner
    version: int = 0
    ref: torch.nn.Module | None = None
    """The frozen initial policy (only when policy.kl_coef > 0)."""
    ptx: object | None = None
    """`trainers.agents.ptx.PtxReplay` (only when policy.ptx_coef > 0)."""
    step_metrics: dict | None = None
    """The last policy step's extra metrics (loss/ptx)."""

    @property
    def tok(self):
        return self.runner.tok

    def sampling(self, seed: int | None) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, seed=seed)

    def sync(self) -> None:
        """The engine serves the trainer's current weights, as the next policy version."""
        self.version += 1
        self.engine.update_weights(((k, v.detach()) for k, v in self.policy.state_dict().items()), self.version)

    def evaluate(self) -> dict:
        e = self.cfg.eval
        return evaluate_agent(self.engine, self.eval_runner, [EVAL_SEED0 + i for i in range(e.episodes)],
                              self.cfg.rollout.max_new_tokens, temperature=e.temperature)

    def sample_actions(self, state_ids: list[list[int]], seed: int) -> tuple[list[list[int]], list[str]]:
        """Fresh utterances a_pi ~ pi(.|s) from the engine at the given states (ids, texts)."""
        out = self.engine.generate(state_ids, self.sampling(seed))
        ids = [s.completion_ids for s in out]
        return ids, [self.tok.decode(i, skip_special_tokens=True).strip() for i in ids]

    def utterance_logprobs(self, state_ids: list[list[int]], action_ids: list[list[int]], model=None):
        """([B, L] differentiable log pi (at the rollout temperature) of each utterance token given its state, [B, L]
        mask); `model` defaults to the policy."""
        ids, attn, P = left_pad(state_ids, action_ids, self.engine.pad_id)
        model = self.policy if model is None else model
        lp = policy_logprobs(model, ids, attn, P, self.cfg.rollout.temperature)  # [B, L]
        mask = torch.zeros_like(lp)
        for i, a in enumerate(action_ids):
            mask[i, :len(a)] = 1
        return lp, mask

    def kl_penalty(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, agg: str
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        """kl_coef x k3 KL(pi || ref) over the mask's tokens ([B, T] each), averaged as `agg` (episode_mean: per row,
        then over rows; token_mean: over all tokens), and its metric."""
        from trainers.grpo.loss import aggregate, k3

        kl = aggregate(k3(ref_logprobs, logprobs), mask, AGG[agg])
        return self.cfg.policy.kl_coef * kl, {"loss/kl": kl.item()}

    def policy_step(self, loss: torch.Tensor) -> float:
        """One optimizer step on `loss` (+ ptx_coef x the ptx NLL); returns the gradient norm before clipping."""
        if self.ptx is not None:
            nll = self.ptx.nll(self.policy)
            loss = loss + self.cfg.policy.ptx_coef * nll
            self.step_metrics = {"loss/ptx": nll.item()}
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.policy.max_grad_norm)
        self.opt.step()
        return float(norm)


def iteration_seeds(cfg: AgentConfig, it: int, n: int) -> list[int]:
    """n training env seeds of iteration `it` (deterministic in (seed, it); a resumed run draws the same ones)."""
    return [int(s) for s in np.random.default_rng([cfg.seed, it, 77]).integers(0, EVAL_SEED0, n)]


def build_context(cfg: AgentConfig, policy_dir: Path | None = None) -> AgentContext:
    """The policy from `policy_dir` (a checkpoint's `policy/`) or `cfg.policy.path`, its engine and the runners."""
    from transformers import AutoModelForCausalLM

    model_dir = policy_dir or resolve_model_path(cfg.policy.path, key="policy.path")
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    policy.train()
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.policy.lr)
    engine = HFEngine(str(model_dir), seed=cfg.seed)
    r = cfg.rollout
    max_context = r.max_context or policy.config.max_position_embeddings

    def runner(split: str) -> MultiTurnRunner:
        return MultiTurnRunner(env=cfg.env, env_kwargs=cfg.env_kwargs_for(split), tokenizer_path=str(model_dir),
                               max_turns=r.max_turns, on_error=r.on_error, max_context=max_context)

    return AgentContext(cfg, Path(model_dir), policy, opt, engine, runner(cfg.split), runner(cfg.eval.split))


def attach_anchors(ctx: AgentContext) -> None:
    """Training only, right after `build_context` (before a resumed run loads its policy): the frozen reference
    (policy.kl_coef > 0: a copy of the warm start already in memory) and the ptx episodes (policy.ptx_coef > 0)."""
    import copy

    p = ctx.cfg.policy
    if p.kl_coef > 0:
        ctx.ref = copy.deepcopy(ctx.policy).eval().requires_grad_(False)
    if p.ptx_coef > 0:
        from trainers.agents.ptx import PtxReplay

        ctx.ptx = PtxReplay(ctx.runner, p.ptx_data, ctx.model_dir, p.ptx_batch_size, ctx.cfg.seed)
