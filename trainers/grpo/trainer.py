"""GRPO and its variants (Dr. GRPO, DAPO), read top to bottom.

One step = generate -> score -> advantage -> update -> sync weights -> log/evaluate/checkpoint. This process is
the controller: rollout workers generate (`rollout/`), and the policy, its update and its checkpoints live on the
trainer ranks (`trainers/grpo/ranks.py`: in this process for one rank, Ray actors for more).
Every sample carries its behaviour log-probs and policy versions, so off-policy correction
(`trainer.offpolicy`) and asynchronous rollouts slot in without changing this loop's shape.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch

from envs.prompting import Prompter, trl_completions
from rewards import RewardSet
from rl.errors import OrchardError, RewardError
from rl.jobkit import Start, checkpoint, evaluate_before, make_tracker, start, summarize, write_state
from rl.rundir import RunDir, atomic_write_text
from rl.zoo import resolve_model_path
from rollout.hf_engine import eos_token_ids
from rollout.logprobs import ESTIMATORS
from rollout.staleness import staleness_metrics
from rollout.types import Sample, SamplingParams
from trainers.advantages import ADVANTAGES, zero_std_groups
from trainers.grpo.batch import PromptSampler, collate
from trainers.grpo.config import GRPOConfig
from trainers.grpo.inputs import Inputs, prepare_inputs
from trainers.grpo.ranks import make_trainer

log = logging.getLogger("orchard")


# --- phases ------------------------------------------------------------------------------------------------------
def generate(engine, prompter: Prompter, rows: list[dict], G: int, sampling: SamplingParams) -> tuple[list[Sample], list[str]]:
    """G samples per prompt row (rendered by `prompter`), group-contiguous. Returns samples and their decoded completions."""
    prompt_ids = [prompter.ids(r) for r in rows]
    samples = engine.generate([p for p in prompt_ids for _ in range(G)], sampling)
    completions = prompter.tok.batch_decode([s.completion_ids for s in samples], skip_special_tokens=True)
    return samples, completions


def score(reward_set: RewardSet, rows: list[dict], G: int, completions: list[str]):
    """Rewards for group-contiguous samples; every dataset column reaches the reward functions as a kwarg, and
    completions of conversational prompts as TRL's assistant messages (`envs.prompting.trl_completions`)."""
    expanded = [r for r in rows for _ in range(G)]
    columns = {k: [r[k] for r in expanded] for k in rows[0] if k != "prompt"}
    return reward_set([r["prompt"] for r in expanded], trl_completions(expanded, completions), columns)


class WorkerEngine:
    """`generate` on rollout worker 0, after everything already queued there (used for evaluation)."""

    def __init__(self, controller):
        self.controller = controller

    def generate(self, prompts, sampling):
        return self.controller.call_blocking(0, "generate", prompts, sampling)


def evaluate(engine, prompter: Prompter, rows: list[dict], eval_set: RewardSet, max_new_tokens: int) -> dict:
    """Held-out accuracy: greedy completions (prompts rendered as in training) scored by `eval_set` (`eval.reward`;
    > 0.5 counts as correct)."""
    samples, completions = generate(engine, prompter, rows, 1, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    out = score(eval_set, rows, 1, completions)
    correct = (out.rewards > 0.5).float()
    return {"eval/accuracy": correct.mean().item(),
            "eval/response_len": sum(len(s.completion_ids) for s in samples) / len(samples)}


def check_reward_signal(none_steps: int, step: int, names: list[str], samples: list[Sample], tok, patience: int) -> None:
    """Warn about a step in which every reward function returned None for every sample; stop after `patience`."""
    example = tok.decode(samples[0].completion_ids, skip_special_tokens=True) if samples else ""
    what = (f"every reward function ({', '.join(names)}) returned None for all {len(samples)} samples of step {step} "
            f"(e.g. completion {example[:60]!r})")
    if patience and none_steps >= patience:
        raise RewardError(f"{what}, {none_steps} steps in a row: no learning signal, so the job stops "
                          f"(reward_none_patience={patience}; 0 never stops)")
    log.warning(f"{what}: no learning signal this step ({none_steps} in a row; the job stops at "
                f"reward_none_patience={patience})")


# --- checkpoint --------------------------------------------------------------------------------------------------
STATE_FILE = "trainer_state.pt"  # the loop's side of a checkpoint: step, RNG, sampler, eval_before, controller


def write_checkpoint(d: Path, step: int, trainer, sampler: PromptSampler, extra: dict) -> None:
    """Fill checkpoint directory `d`: the trainer writes model/ and optimizer.pt, this process the loop's state."""
    trainer.save(d)
    write_state(d / STATE_FILE, {"step": step, "sampler": sampler.state_dict(), **extra})


# --- the loop ----------------------------------------------------------------------------------------------------
def train(cfg: GRPOConfig, run: RunDir) -> dict:
    """Start (or join) Ray if the cluster uses it, run the loop, and shut Ray down again if this call started it."""
    from rl.cluster import check_resources, init_ray

    job = start(run, cfg.seed)
    model_dir = resolve_model_path(cfg.model.path)
    inputs = prepare_inputs(cfg, model_dir)  # data, rewards and one rendered prompt checked before any weights load
    ray_started = init_ray(cfg.cluster) if cfg.cluster.backend == "ray" else False
    try:
        if cfg.cluster.backend == "ray":
            check_resources(cfg.cluster)
        return _train(cfg, run, model_dir, job, inputs)
    finally:
        if ray_started:
            import ray

            ray.shutdown()


def _train(cfg: GRPOConfig, run: RunDir, model_dir: Path, job: Start, inputs: Inputs) -> dict:
    from rollout.controller import RolloutController
    from rollout.launch import start_workers, sync_hub

    trainer = make_trainer(cfg, model_dir, job.path)
    tok, prompter, train_rows, eval_rows = inputs.tok, inputs.prompter, inputs.train_rows, inputs.eval_rows
    r, t, c = cfg.rollout, cfg.trainer, cfg.cluster
    sampler = PromptSampler(len(train_rows), cfg.seed)
    reward_set = inputs.reward_set
    advantage_fn = ADVANTAGES.get(t.advantage)
    G = r.num_generations
    loss_weights = getattr(ESTIMATORS.get(cfg.model.estimator), "loss_weights", None)  # masked-diffusion estimators
    eos_ids = eos_token_ids(str(model_dir), tok) if loss_weights else set()

    def score_fn(task, trajectories):
        rows = [train_rows[i] for i in task.prompt_indices]
        completions = tok.batch_decode([x.as_sample().completion_ids for x in trajectories], skip_special_tokens=True)
        out = score(reward_set, rows, task.group_size, completions)
        return out.rewards, out.valid, out.metrics

    def write_workers(infos: list[dict]) -> None:
        atomic_write_text(run.path / "workers.json", json.dumps(infos, indent=2))

    state = job.load_state(STATE_FILE)  # {} on a fresh start; RNG restored on a resume
    if job.resumed:
        sampler.load_state_dict(state["sampler"])

    ctrl = pool = tracker = None
    try:
        hub = sync_hub(c, trainer.device, "object_store" if r.lora_sync == "adapter" else None)  # adapters: object store
        pool = start_workers(c, r, model_dir=model_dir, dtype=cfg.model.dtype, seed=cfg.seed,
                             weights_thread=hub is not None, lora=r.lora_sync == "adapter",
                             overlap=cfg.max_staleness > 0, estimator=cfg.model.estimator)
        ctrl = RolloutController(
            pool, prompt_ids=inputs.train_ids, sampler=sampler,
            score_fn=score_fn, group_size=G, groups_per_step=r.prompts_per_step, max_staleness=cfg.max_staleness,
            prompts_per_task=r.prompts_per_task or -(-r.prompts_per_step // c.rollout_workers),
            sampling=SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p),
            seed=cfg.seed, last_step=cfg.max_steps, start_version=job.step,
            inflight_per_worker=c.max_inflight_per_worker, max_restarts=c.max_worker_restarts,
            sync_tol=t.sync_check_tol, on_workers_changed=write_workers, sync_hub=hub)
        if state.get("controller"):
            ctrl.load_state_dict(state["controller"])
        ctrl.publish(trainer, job.step)
        eval_engine = WorkerEngine(ctrl)

        def held_out() -> dict:
            return evaluate(eval_engine, prompter, eval_rows, inputs.eval_reward_set, cfg.eval.max_new_tokens)

        before = evaluate_before(run, state.get("eval_before"),
                                 lambda: held_out()["eval/accuracy"],
                                 "eval/accuracy", cfg.log.tensorboard)
        log.info(f"held-out accuracy before training: {before:.3f} ({len(eval_rows)} problems)")

        tracker = make_tracker(run, cfg.log, cfg.max_steps, job.step,
                               {"reward/mean": "reward", "eval/accuracy": "acc", "perf/tokens_per_s": "tok/s"}, "grpo")
        last_eval = before
        probe: list[Sample] = []  # fixed weight-sync probe: the first samples this process generates

        def has_signal(g) -> bool:  # DAPO dynamic sampling: a group whose rewards all agree teaches nothing
            return not bool(zero_std_groups(g.rewards, torch.zeros(G, dtype=torch.long), g.valid).all())

        none_steps = 0  # consecutive steps in which no sample got a number from any reward function
        for step in range(job.step + 1, cfg.max_steps + 1):
            t0 = time.time()
            groups, m = ctrl.collect(step, accept=has_signal if t.dynamic_sampling else None,
                                     max_consumed=r.prompts_per_step * (1 + t.max_resample_rounds)
                                     if t.dynamic_sampling else None)
            t_gen = time.time() - t0
            samples = [x for g in groups for x in g.samples]
            if not probe:
                probe = [x for x in samples if x.completion_ids][:8]
            if groups:
                rw = torch.cat([g.rewards for g in groups])
                vl = torch.cat([g.valid for g in groups])
                m["reward/mean"] = rw[vl].mean().item() if vl.any() else float("nan")
                m["reward/std"] = rw[vl].std().item() if vl.sum() > 1 else 0.0
                m["response/length_mean"] = sum(len(x.completion_ids) for x in samples) / len(samples)
                m["response/stop_frac"] = sum(x.finish_reason == "stop" for x in samples) / len(samples)
                for k in groups[0].reward_metrics:
                    vals = [g.reward_metrics[k] for g in groups if k in g.reward_metrics]
                    m[k] = sum(vals) / len(vals)
                none_steps = none_steps + 1 if m.get("reward/all_none_frac", 0.0) >= 1.0 else 0
                if none_steps:
                    check_reward_signal(none_steps, step, reward_set.names, samples, tok, cfg.reward_none_patience)
            m["dynamic_sampling/groups"] = len(groups)
            if not groups:
                m["dynamic_sampling/skipped_step"] = 1.0
                ctrl.publish(trainer, step)  # the version advances even without an update
                tracker.log(step, m)
                continue
            rewards_t = torch.cat([g.rewards for g in groups])
            valid_t = torch.cat([g.valid for g in groups])
            gids_t = torch.arange(len(groups)).repeat_interleave(G)
            adv = advantage_fn(rewards_t, gids_t, valid_t)  # [B]
            batch = collate(samples, adv, rewards_t, gids_t, tok.pad_token_id)
            batch.response_mask *= valid_t[:, None].float()  # dropped samples do not train
            if loss_weights:  # which canvas positions train, and how much (diffu_grpo: up to the EOS; cj_grpo: 1/|U_s|)
                batch.response_mask *= loss_weights(batch, eos_ids)
            versions = [v[k].tolist() for v, k in zip(batch.versions, batch.response_mask > 0)]  # tokens that train
            m.update(staleness_metrics(versions, step, cfg.max_staleness))
            # update
            t1 = time.time()
            m.update(trainer.update(batch))
            t_train = time.time() - t1
            # publish the new weights to every worker (+ the probe check, verified asynchronously by each worker)
            t2 = time.time()
            check = t.sync_check_every and step % t.sync_check_every == 0 and probe
            ctrl.publish(trainer, step, probe if check else None, trainer.probe_logprobs(probe) if check else None)
            t_sync = time.time() - t2
            gen_tokens = sum(len(x.completion_ids) for x in samples)
            m.update({"perf/gen_s": t_gen, "perf/train_s": t_train, "perf/sync_s": t_sync,
                      "perf/step_s": time.time() - t0, "perf/tokens_per_s": gen_tokens / max(time.time() - t0, 1e-9),
                      "perf/samples_per_s": len(samples) / max(time.time() - t0, 1e-9),
                      "perf/trainer_idle_frac": m["perf/trainer_wait_s"] / max(time.time() - t0, 1e-9)})
            if step == cfg.max_steps or (cfg.eval.every and step % cfg.eval.every == 0):
                last_eval = held_out()["eval/accuracy"]
                m["eval/accuracy"] = last_eval
            if step == cfg.max_steps:
                ctrl.drain_checks(m)
            for k, v in m.items():
                if isinstance(v, float) and math.isnan(v) and not k.startswith("reward/"):
                    raise OrchardError(f"metric {k} is NaN at step {step}: training diverged (lower trainer.lr?); "
                                       f"the last complete checkpoint is intact, resume with --resume")
            tracker.log(step, m)
            checkpoint(run, step, cfg.max_steps, cfg.checkpoint, lambda d: write_checkpoint(
                d, step, trainer, sampler, {"eval_before": before, "controller": ctrl.state_dict()}))
        ledger = dict(ctrl.stats, outstanding=ctrl.sched.n_outstanding)
    finally:
        if tracker is not None:
            tracker.close()
        if pool is not None:
            pool.close()
        trainer.close()
    after = last_eval
    log.info(f"held-out accuracy: {before:.3f} -> {after:.3f} ({after - before:+.3f})")
    return summarize(job, {"algo": "grpo", "steps": cfg.max_steps, "eval/size": len(eval_rows), "model": str(model_dir),
                           "engine": r.engine, "device": str(trainer.device), "trainer_ranks": c.trainer_ranks,
                           "backend": c.backend, "rollout_workers": c.rollout_workers,
                           "max_staleness": cfg.max_staleness, "rollout_ledger": ledger},
                     "eval/accuracy", before, after)

