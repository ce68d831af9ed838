"""The agent jobs' training episodes through the rollout controller, as single-turn GRPO's samples go
(`trainers/grpo/trainer.py`): `RolloutController` + `WorkerPool` (`rollout/launch.py`), so they get the same
staleness bound (`max_staleness`), Ray rollout workers (`cluster.*`), replay of a killed worker's episodes from
their seeds, and the verified weight sync (a probe batch's log-probs on every worker against the trainer's).

The controller's "prompts" are env seeds: a task's prompt entries are `[env_seed]` and the multi_turn runner plays
`group_size` episodes per seed (agent_grpo: `grpo.group_size`; archer / filtered_bc: 1). The seeds are drawn from
`SeedStream`, which yields exactly `iteration_seeds(cfg, 1, n) + iteration_seeds(cfg, 2, n) + ...`: iteration `it`
trains on the seeds of block `it` (with max_staleness 0), and a resumed run draws the same ones. Policy version v
is the policy after iteration v's update; a token made by version v and trained on at iteration it is
(it - 1 - v) versions stale.

ArCHer's learner is off-policy (a replay buffer of utterance transitions; its actor samples fresh utterances from
the in-process engine), so staleness changes only which policy filled the buffer; the bound matters for
agent_grpo, whose clipped ratio is taken against the behaviour log-probs of the (possibly stale) episodes.
"""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

import torch

from rl.rundir import RunDir, atomic_write_text
from rollout.logprobs import left_pad, policy_logprobs
from rollout.staleness import staleness_metrics
from rollout.types import Sample, SamplingParams, Trajectory
from trainers.agents.context import AgentContext, iteration_seeds
from trainers.agents.episodes import episode_return, episode_success, is_usable


class SeedStream:
    """The controller's prompt sampler: iteration blocks of `iteration_seeds`, drawn one after the other. Its state
    is one int (how many seeds were drawn), so a resumed run continues the same stream."""

    def __init__(self, cfg, per_iter: int):
        self.cfg, self.per_iter, self.drawn = cfg, per_iter, 0
        self._block: tuple[int, list[int]] | None = None

    def seed_at(self, k: int) -> int:
        it, j = divmod(k, self.per_iter)
        if self._block is None or self._block[0] != it:
            self._block = (it, iteration_seeds(self.cfg, it + 1, self.per_iter))
        return self._block[1][j]

    def next(self, n: int) -> list[int]:
        out = [self.seed_at(k) for k in range(self.drawn, self.drawn + n)]
        self.drawn += n
        return out

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = state["drawn"]


class EnvSeedPrompts:
    """prompt_ids for the controller: the "prompt" of index s is `[s]`, env seed s (the multi_turn runner's form)."""

    def __getitem__(self, seed: int) -> list[int]:
        return [int(seed)]


class PolicySource:
    """The trainer's side of the weight sync over the in-process policy (object store or broadcast)."""

    def __init__(self, policy: torch.nn.Module):
        self.policy, self.group = policy, None

    def state(self) -> dict:
        return {k: v.detach() for k, v in self.policy.state_dict().items()}

    def weights(self) -> tuple[dict, int]:
        sd = self.state()
        return sd, len(sd)

    def sync_join(self, spec) -> None:
        from rollout.weight_sync import BroadcastGroup

        self.group = BroadcastGroup.rejoin(self.group, spec, 0, torch.device("cpu"))

    def sync_broadcast(self) -> int:
        return self.group.send(self.state())

    def close(self) -> None:
        if self.group is not None:
            self.group.close()


def probe_logprobs(policy: torch.nn.Module, probe: list[Sample], pad_id: int) -> list[list[float]]:
    """T=1 log-probs of each probe completion under the trainer's policy (what each worker's engine.score gives)."""
    with torch.no_grad():
        ids, attn, P = left_pad([s.prompt_ids for s in probe], [s.completion_ids for s in probe], pad_id)
        lp = policy_logprobs(policy, ids, attn, P, 1.0)  # [B, L]
    return [lp[i, :len(s.completion_ids)].tolist() for i, s in enumerate(probe)]


def episode_metrics(trajs: list[Trajectory], dt: float) -> dict:
    """The iteration's training episodes: return, success, turns, dropped / overflowed episodes, throughput."""
    n = len(trajs)
    steps = sum(len(t.steps) for t in trajs)
    tokens = sum(len(s.token_ids) for t in trajs for s in t.steps)
    return {"rollout/return": sum(map(episode_return, trajs)) / n,
            "rollout/success": sum(map(episode_success, trajs)) / n, "rollout/turns": steps / n,
            "rollout/dropped": sum(t.steps[-1].info.get("end") == "dropped" if t.steps else 1 for t in trajs),
            "rollout/overflow": sum(bool(t.steps) and t.steps[-1].info.get("end") == "context_overflow"
                                    for t in trajs),
            "perf/env_steps_per_s": steps / dt, "perf/tokens_per_s": tokens / dt, "perf/rollout_s": dt}


class AgentRollouts:
    """The controller, its workers and the weight-sync source of one agent job (`collect`, `publish`, `close`)."""

    def __init__(self, ctx: AgentContext, run: RunDir, start_version: int, state: dict | None):
        from rollout.controller import RolloutController
        from rollout.launch import start_workers, sync_hub

        cfg, c, r = ctx.cfg, ctx.cfg.cluster, ctx.cfg.rollout
        self.ctx, self.cfg = ctx, cfg
        G = cfg.grpo.group_size if cfg.algo == "agent_grpo" else 1
        groups = cfg.episodes_per_iter // G  # env seeds per iteration
        self.seeds = SeedStream(cfg, groups)
        self.source = PolicySource(ctx.policy)
        self.probe: list[Sample] = []  # fixed weight-sync probe: the first turns this job generates
        self.pool = self.ctrl = None
        try:
            hub = sync_hub(c, torch.device("cpu"))
            self.pool = start_workers(c, SimpleNamespace(engine="hf", engine_options=None), model_dir=ctx.model_dir,
                                      dtype="float32", seed=cfg.seed, weights_thread=hub is not None,
                                      overlap=cfg.max_staleness > 0, runner=ctx.runner)

            def score(task, trajectories):
                valid = torch.tensor([is_usable(t) for t in trajectories])
                rewards = torch.tensor([episode_return(t) if v else 0.0 for t, v in zip(trajectories, valid)])
                return rewards, valid, {}

            def write_workers(infos: list[dict]) -> None:
                atomic_write_text(run.path / "workers.json", json.dumps(infos, indent=2))

            self.ctrl = RolloutController(
                self.pool, prompt_ids=EnvSeedPrompts(), sampler=self.seeds, score_fn=score, group_size=G,
                groups_per_step=groups, max_staleness=cfg.max_staleness,
                prompts_per_task=-(-groups // c.rollout_workers),
                sampling=SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature),
                seed=cfg.seed, last_step=cfg.iterations, start_version=start_version,
                inflight_per_worker=c.max_inflight_per_worker, max_restarts=c.max_worker_restarts,
                sync_tol=r.sync_check_tol, on_workers_changed=write_workers, sync_hub=hub)
            if state:
                self.seeds.load_state_dict(state["seeds"])
                self.ctrl.load_state_dict(state["controller"])
                self.probe = [Sample(**s) for s in state["probe"]]
            self.ctrl.publish(self.source, start_version)
        except BaseException:
            self.close()
            raise

    def collect(self, it: int) -> tuple[list[Trajectory], dict]:
        """Iteration `it`'s episodes (group-contiguous: each seed's G episodes together), earliest deadline first,
        with the episode, staleness and controller metrics."""
        t0 = time.time()
        groups, m = self.ctrl.collect(it)
        trajs = [t for g in groups for t in g.trajectories]
        if not self.probe:
            self.probe = [Sample(s.context_ids, s.token_ids, s.logprobs, s.versions)
                          for t in trajs for s in t.steps[:1] if s.token_ids][:8]
        m.update(episode_metrics(trajs, time.time() - t0))
        m.update(staleness_metrics([t.versions for t in trajs], it, self.cfg.max_staleness))  # per episode
        return trajs, m

    def publish(self, it: int, metrics: dict) -> None:
        """Ship policy version `it` (the policy after iteration it's update) to every worker; every
        `rollout.sync_check_every` iterations with the probe check (verified on each worker, asynchronously; the
        last iteration waits for all of them)."""
        every = self.cfg.rollout.sync_check_every
        check = bool(every and it % every == 0 and self.probe)
        lps = probe_logprobs(self.ctx.policy, self.probe, self.ctx.engine.pad_id) if check else None
        t0 = time.time()
        self.ctrl.publish(self.source, it, self.probe if check else None, lps)
        metrics["perf/sync_s"] = time.time() - t0
        if it == self.cfg.iterations:
            self.ctrl.drain_checks(metrics)

    def state_dict(self) -> dict:
        return {"controller": self.ctrl.state_dict(), "seeds": self.seeds.state_dict(),
                "probe": [vars(s) for s in self.probe]}

    @property
    def ledger(self) -> dict:
        return dict(self.ctrl.stats, outstanding=self.ctrl.sched.n_outstanding)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.source.close()
