"""The agent jobs `archer`, `agent_grpo` and `filtered_bc`: one loop, three learners.

    collect episodes (rollout controller + workers, `trainers/agents/rollouts.py`) -> learner.update (its own
    losses; syncs the in-process engine) -> publish the weights to the workers (+ probe check) -> log -> evaluate
    every `eval.every` (in-process engine) -> checkpoint

A checkpoint holds the policy (`policy/`, HF format), and in `state.pt` the policy optimizer, the learner's state
(ArCHer: critic, target critic, critic optimizer, replay buffer, its sampling RNG), the policy version, the
episodes consumed, the controller's undrawn / unconsumed seeds, the evaluation before training and the
python/numpy/torch RNG (rl/jobkit.py). Metrics:
`rollout/*` (the iteration's training episodes), `eval/success`, `eval/return`, `eval/turns` (greedy, fixed
held-out seeds), `episodes` (env episodes consumed so far: the budget the benchmark compares at), `offpolicy/*`
(staleness), `sync/*` (weight-sync checks), `rollout/*` controller ledger (draws, requeued tasks, restarts).
"""
from __future__ import annotations

import time
from pathlib import Path

from rl.jobkit import checkpoint, evaluate_before, make_tracker, start, summarize, write_state
from rl.jobs import Job
from rl.rundir import RunDir
from trainers.agents.config import AgentConfig


def make_learner(ctx):
    from trainers.agents.filtered_bc import FilteredBC
    from trainers.agents.grpo import AgentGRPO
    from trainers.archer.train import Archer

    return {"archer": Archer, "agent_grpo": AgentGRPO, "filtered_bc": FilteredBC}[ctx.cfg.algo](ctx)


def train(cfg: AgentConfig, run: RunDir) -> dict:
    """Start (or join) Ray if the cluster uses it, run the loop, and shut Ray down again if this call started it."""
    from rl.cluster import check_resources, init_ray
    from rl.zoo import resolve_model_path

    # zoo models build (and seed torch while they do) before the job seeds its RNGs: a first run that builds them
    # and a resumed run that finds them cached draw the same random numbers
    policy_dir = resolve_model_path(cfg.policy.path, key="policy.path")
    if cfg.algo == "archer":
        resolve_model_path(cfg.archer.critic_path, key="archer.critic_path")
    ray_started = init_ray(cfg.cluster) if cfg.cluster.backend == "ray" else False
    try:
        if cfg.cluster.backend == "ray":
            check_resources(cfg.cluster)
        return _train(cfg, run, policy_dir)
    finally:
        if ray_started:
            import ray

            ray.shutdown()


def _train(cfg: AgentConfig, run: RunDir, policy_dir: Path) -> dict:
    import torch

    from trainers.agents.context import attach_anchors, build_context
    from trainers.agents.rollouts import AgentRollouts

    job = start(run, cfg.seed, cfg.torch_threads)
    ctx = build_context(cfg, policy_dir)
    attach_anchors(ctx)
    learner = make_learner(ctx)
    state = job.load_state("state.pt")
    if state:
        ctx.policy.load_state_dict(torch.load(job.path / "policy.pt", weights_only=True))
        ctx.opt.load_state_dict(state["policy_opt"])
        learner.load_state_dict(state["learner"])
        if ctx.ptx is not None:
            ctx.ptx.load_state_dict(state["ptx"])
        ctx.version = state["version"] - 1
        ctx.sync()  # the engine serves the restored policy, at the version it had
    rollouts = tracker = None
    try:
        rollouts = AgentRollouts(ctx, run, job.step, state.get("rollouts"))  # the workers get the policy too
        episodes = state.get("episodes", 0)
        before = evaluate_before(run, state.get("eval_before"), ctx.evaluate, lambda v: {**v, "episodes": 0},
                                 cfg.log.tensorboard)
        last_eval = state.get("last_eval", before)
        tracker = make_tracker(run, cfg.log, cfg.iterations, job.step,
                               show={"rollout/return": "ret", "eval/success": "succ", "episodes": "eps"},
                               desc=cfg.algo)
        for it in range(job.step + 1, cfg.iterations + 1):
            t0 = time.time()
            trajs, metrics = rollouts.collect(it)  # --- episodes from the workers (env stepped beside the engine)
            metrics.update(learner.update(trajs, it))  # --- the learner's losses and steps (it syncs the engine)
            metrics.update(ctx.step_metrics or {})  # the ptx NLL, only in iterations that stepped the policy
            ctx.step_metrics = None
            rollouts.publish(it, metrics)  # --- policy version `it` to the workers (+ the probe check)
            episodes += len(trajs)
            metrics.update({"episodes": episodes, "policy/version": ctx.version, "perf/iter_s": time.time() - t0})
            if it % cfg.eval.every == 0 or it == cfg.iterations:
                last_eval = ctx.evaluate()
                metrics.update(last_eval)
            tracker.log(it, metrics)

            def write(d: Path) -> None:
                ctx.policy.save_pretrained(d / "policy", safe_serialization=True)
                ctx.tok.save_pretrained(d / "policy")
                torch.save(ctx.policy.state_dict(), d / "policy.pt")  # exact restore (the HF copy is for `rl eval`)
                write_state(d / "state.pt", {"policy_opt": ctx.opt.state_dict(), "learner": learner.state_dict(),
                                             "version": ctx.version, "episodes": episodes, "eval_before": before,
                                             "last_eval": last_eval, "rollouts": rollouts.state_dict(),
                                             **({"ptx": ctx.ptx.state_dict()} if ctx.ptx is not None else {})})

            checkpoint(run, it, cfg.iterations, cfg.checkpoint, write)
        ledger = rollouts.ledger
    finally:
        if tracker is not None:
            tracker.close()
        if rollouts is not None:
            rollouts.close()
    return summarize(job, {"algo": cfg.algo, "env": cfg.env, "episodes": episodes,
                           "eval_success_before": before["eval/success"],
                           "eval_success_after": last_eval["eval/success"], "backend": cfg.cluster.backend,
                           "rollout_workers": cfg.cluster.rollout_workers, "max_staleness": cfg.max_staleness,
                           "rollout_ledger": ledger},
                     "eval/return", before["eval/return"], last_eval["eval/return"])


def evaluate_checkpoint(cfg: AgentConfig, ckpt: Path | None) -> dict:
    """`rl eval`: the held-out evaluation of a checkpoint's policy (or, with None, of `policy.path`)."""
    from trainers.agents.context import build_context

    ctx = build_context(cfg, Path(ckpt) / "policy" if ckpt is not None else None)
    return {"policy": str(ctx.model_dir), "env": cfg.env, "split": cfg.eval.split, **ctx.evaluate()}


def _evaluate(cfg, ckpt):
    return evaluate_checkpoint(cfg, ckpt)


ARCHER_JOB = Job("archer", AgentConfig, train, "ArCHer: utterance-level twin-Q/V critic + token-level policy "
                 "gradient on a multi-turn text env", evaluate=_evaluate)
GRPO_JOB = Job("agent_grpo", AgentConfig, train, "multi-turn GRPO on a text env (G episodes per env seed)",
               evaluate=_evaluate)
BC_JOB = Job("filtered_bc", AgentConfig, train, "filtered behaviour cloning on a text env (top fraction of "
             "episodes)", evaluate=_evaluate)
