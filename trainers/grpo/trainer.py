"""GRPO and its variants (Dr. GRPO, DAPO), read top to bottom.

One step = generate -> score -> advantage -> update -> sync weights -> log/evaluate/checkpoint.
Every sample carries its behaviour log-probs and policy versions, so off-policy correction
(`trainer.offpolicy`) and asynchronous rollouts slot in without changing this loop's shape.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rewards import RewardSet, RewardSpec
from rl.errors import OrchardError, WeightSyncError
from rl.rundir import RunDir, atomic_write_text
from rl.seeding import rng_state, seed_everything, set_rng_state
from rl.zoo import resolve_model_path
from rollout.engine import policy_logprobs
from rollout.types import RolloutBatch, Sample, SamplingParams
from trainers.advantages import ADVANTAGES, zero_std_groups
from trainers.grpo.batch import PromptSampler, collate
from trainers.grpo.config import GRPOConfig
from trainers.grpo.loss import LossConfig, LossInputs, policy_loss

log = logging.getLogger("orchard")


# --- set-up ------------------------------------------------------------------------------------------------------
@dataclass
class Policy:
    """The trainable model (optionally a peft LoRA wrapper), its tokenizer, optimizer and frozen reference."""

    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ref: torch.nn.Module | None
    lora: bool
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """Full HF parameter names -> tensors (LoRA merged in), as rollout engines expect."""
        if not self.lora:
            return {k: v.detach() for k, v in self.model.state_dict().items()}
        self.model.merge_adapter()
        try:
            sd = {}
            for k, v in self.model.state_dict().items():
                if "lora_" in k:
                    continue
                sd[k.replace("base_model.model.", "", 1).replace(".base_layer", "")] = v.detach().clone()
            return sd
        finally:
            self.model.unmerge_adapter()


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def build_policy(cfg: GRPOConfig, model_dir: Path) -> Policy:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    dtype = torch_dtype(cfg.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    ref = None
    if cfg.trainer.kl_coef > 0 and not cfg.model.lora.enabled:
        ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval().requires_grad_(False)
    if cfg.model.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lc = cfg.model.lora
        model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                 target_modules=lc.target_modules, task_type="CAUSAL_LM"))
    model.train()
    t = cfg.trainer
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr, betas=t.betas,
                            weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (t.warmup_steps + 1)))
    return Policy(model, tok, opt, sched, ref, cfg.model.lora.enabled, device)


def ref_logprobs(policy: Policy, batch: RolloutBatch, temperature: float) -> torch.Tensor | None:
    if policy.ref is not None:
        with torch.no_grad():
            return policy_logprobs(policy.ref, batch.input_ids, batch.attention_mask, batch.prompt_len, temperature)
    if policy.lora:  # the reference is the base model: the same weights with adapters switched off
        with torch.no_grad(), policy.model.disable_adapter():
            return policy_logprobs(policy.model, batch.input_ids, batch.attention_mask, batch.prompt_len, temperature)
    return None


# --- phases ------------------------------------------------------------------------------------------------------
def generate(engine, tok, rows: list[dict], G: int, sampling: SamplingParams) -> tuple[list[Sample], list[str]]:
    """G samples per prompt row, group-contiguous. Returns samples and their decoded completions."""
    prompt_ids = [tok(r["prompt"])["input_ids"] for r in rows]
    samples = engine.generate([p for p in prompt_ids for _ in range(G)], sampling)
    completions = tok.batch_decode([s.completion_ids for s in samples], skip_special_tokens=True)
    return samples, completions


def score(reward_set: RewardSet, rows: list[dict], G: int, completions: list[str]):
    """Rewards for group-contiguous samples; every dataset column reaches the reward functions as a kwarg."""
    expanded = [r for r in rows for _ in range(G)]
    columns = {k: [r[k] for r in expanded] for k in rows[0] if k != "prompt"}
    return reward_set([r["prompt"] for r in expanded], completions, columns)


def update(policy: Policy, batch: RolloutBatch, cfg: GRPOConfig, loss_cfg: LossConfig, recompute: bool = False) -> dict:
    """`ppo_epochs` optimizer steps over the batch, accumulating gradients over micro-batches so that the
    result equals one full-batch step (each micro-batch's loss is weighted by its share of the aggregate)."""
    t, T = cfg.trainer, max(cfg.rollout.temperature, 1e-6)
    B = len(batch)
    dev = policy.device
    # The "old" (proximal) policy of the clipped ratio is the policy before this update. With one epoch the
    # parameters do not change until the single optimizer step, so its log-probs are exactly the current ones,
    # detached: no extra forward pass. With more epochs they are recomputed once, up front.
    prox_is_current = (recompute or t.recompute_old_logprobs) and t.ppo_epochs == 1
    with torch.no_grad():
        old = batch.behav_logprobs
        if t.ppo_epochs > 1:
            policy.model.eval()
            old = torch.cat([policy_logprobs(policy.model, mb.input_ids.to(dev), mb.attention_mask.to(dev),
                                             mb.prompt_len, T).float().cpu()
                             for mb in _micro(batch, t.micro_batch_size)])  # [B, L]
            policy.model.train()
        ref = None
        if t.kl_coef > 0:
            ref = torch.cat([ref_logprobs(policy, mb, T).float().cpu() for mb in _micro(batch, t.micro_batch_size)])
    total_tokens = batch.response_mask.sum().clamp(min=1)
    metrics: dict[str, float] = {}
    for _ in range(t.ppo_epochs):
        policy.optimizer.zero_grad(set_to_none=True)
        for start in range(0, B, t.micro_batch_size):
            idx = slice(start, min(B, start + t.micro_batch_size))
            mb = batch.select(idx)
            lp = policy_logprobs(policy.model, mb.input_ids.to(dev), mb.attention_mask.to(dev), mb.prompt_len, T)
            old_mb = lp.detach().float() if prox_is_current else old[idx].to(dev)
            inputs = LossInputs(logprobs=lp.float(), old_logprobs=old_mb, behav_logprobs=mb.behav_logprobs.to(dev),
                                advantages=mb.advantages.to(dev), response_mask=mb.response_mask.to(dev),
                                ref_logprobs=None if ref is None else ref[idx].to(dev))
            loss, m = policy_loss(inputs, loss_cfg, name=t.loss)
            share = (mb.response_mask.sum() / total_tokens) if t.loss_agg == "token_mean" else torch.tensor(len(mb) / B)
            (loss * share.to(dev)).backward()
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) * float(share)
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in policy.model.parameters() if p.requires_grad], t.max_grad_norm)
        policy.optimizer.step()
        policy.scheduler.step()
    metrics = {k: v / t.ppo_epochs for k, v in metrics.items()}
    metrics["actor/grad_norm"] = float(grad_norm)
    metrics["actor/lr"] = policy.scheduler.get_last_lr()[0]
    return metrics


@torch.no_grad()
def probe_logprobs(policy: Policy, probe: list[Sample]) -> list[list[float]]:
    """The trainer's T=1 log-probs of the weight-sync probe's completions (what every worker must reproduce)."""
    z = torch.zeros(len(probe))
    b = collate(probe, z, z, z.long(), policy.tokenizer.pad_token_id)
    was_training = policy.model.training
    policy.model.eval()
    lp = policy_logprobs(policy.model, b.input_ids.to(policy.device), b.attention_mask.to(policy.device), b.prompt_len, 1.0)
    policy.model.train(was_training)
    return [lp[i, :len(s.completion_ids)].float().cpu().tolist() for i, s in enumerate(probe)]


class WorkerEngine:
    """`generate` on rollout worker 0, after everything already queued there (used for evaluation)."""

    def __init__(self, controller):
        self.controller = controller

    def generate(self, prompts, sampling):
        return self.controller.call_blocking(0, "generate", -1, prompts, sampling)["samples"]


def _micro(batch: RolloutBatch, size: int):
    for start in range(0, len(batch), size):
        yield batch.select(slice(start, start + size))


def evaluate(engine, tok, rows: list[dict], cfg: GRPOConfig) -> dict:
    """Held-out accuracy: greedy completions scored by `eval.reward` (> 0.5 counts as correct)."""
    eval_set = RewardSet([RewardSpec(fn=cfg.eval.reward)], timeout_s=cfg.reward_timeout_s, on_error="raise")
    samples, completions = generate(engine, tok, rows, 1, SamplingParams(max_new_tokens=cfg.eval.max_new_tokens, temperature=0.0))
    out = score(eval_set, rows, 1, completions)
    correct = (out.rewards > 0.5).float()
    return {"eval/accuracy": correct.mean().item(),
            "eval/response_len": sum(len(s.completion_ids) for s in samples) / len(samples)}


# --- checkpoint --------------------------------------------------------------------------------------------------
def save_checkpoint(run: RunDir, step: int, policy: Policy, sampler: PromptSampler, extra: dict, keep: int) -> None:
    with run.checkpoint_writer(step, keep=keep) as d:
        policy.model.save_pretrained(d / "model", safe_serialization=True)
        policy.tokenizer.save_pretrained(d / "model")
        torch.save({"step": step, "optimizer": policy.optimizer.state_dict(), "scheduler": policy.scheduler.state_dict(),
                    "rng": rng_state(), "sampler": sampler.state_dict(), **extra}, d / "trainer_state.pt")


def load_checkpoint(ckpt: Path, policy: Policy, sampler: PromptSampler) -> dict:
    from safetensors.torch import load_file

    weights = {}
    for f in sorted((ckpt / "model").glob("*.safetensors")):
        weights.update(load_file(f))
    if policy.lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(policy.model, weights)
    else:
        missing, unexpected = policy.model.load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:  # lm_head may be tied to the embedding
            raise RuntimeError(f"checkpoint {ckpt} does not match the model: missing={missing[:5]} unexpected={unexpected[:5]}")
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    policy.optimizer.load_state_dict(state["optimizer"])
    policy.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    sampler.load_state_dict(state["sampler"])
    return state


# --- the loop ----------------------------------------------------------------------------------------------------
def start_workers(cfg: GRPOConfig, model_dir: Path, run: RunDir):
    """Rollout workers per `cfg.cluster` (starting a local Ray if needed). Returns (pool, ray_started)."""
    from rl.cluster import init_ray, pin_to_core
    from rollout.workers import WorkerPool

    c, r = cfg.cluster, cfg.rollout
    started = init_ray(c) if c.backend == "ray" else False
    if c.pin_cpus:
        pin_to_core(0, 1)
    opts = {"dtype": cfg.model.dtype, "seed": cfg.seed, "max_batch": r.max_batch}
    env = {}
    if r.engine == "vllm":
        opts.update(max_model_len=r.vllm.max_model_len, gpu_memory_utilization=r.vllm.gpu_memory_utilization,
                    enforce_eager=r.vllm.enforce_eager)
        env = {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}
    pool = WorkerPool(c.backend, c.rollout_workers, {"kind": r.engine, "model_path": str(model_dir), "engine_opts": opts},
                      cpus_per_worker=c.cpus_per_worker, gpus_per_worker=c.gpus_per_worker, pin_cpus=c.pin_cpus,
                      env_vars=env, partial_chunk_tokens=r.partial_chunk_tokens)
    return pool, started


def staleness_metrics(batch: RolloutBatch, step: int, max_staleness: int) -> dict:
    """How many policy versions behind the trainer (version step - 1) the batch's samples were generated."""
    mask = batch.response_mask > 0  # [B, L]
    if not mask.any():
        return {"offpolicy/staleness_mean": 0.0, "offpolicy/staleness_max": 0.0}
    tok_stale = (step - 1) - batch.versions[mask].float()  # per token
    oldest = torch.where(mask, batch.versions, torch.full_like(batch.versions, 2**31 - 1)).min(dim=1).values
    seq_stale = ((step - 1) - oldest[mask.any(dim=1)]).long()  # per sample: its oldest token
    m = {"offpolicy/staleness_mean": tok_stale.mean().item(), "offpolicy/staleness_max": float(seq_stale.max())}
    for k in range(max_staleness + 1):
        m[f"offpolicy/staleness_frac_{k}"] = (seq_stale == k).float().mean().item()
    return m


def train(cfg: GRPOConfig, run: RunDir) -> dict:
    from envs.datasets import load_prompts
    from rl.progress import Tracker
    from rollout.controller import RolloutController
    from rollout.types import SamplingParams

    t_start = time.time()
    seed_everything(cfg.seed)
    model_dir = resolve_model_path(cfg.model.path)
    policy = build_policy(cfg, model_dir)
    tok = policy.tokenizer
    d, r, t, c = cfg.data, cfg.rollout, cfg.trainer, cfg.cluster
    train_rows = load_prompts(d.name, "train", d.train_size, cfg.seed, d.prompt_key, d.answer_key)
    eval_rows = load_prompts(d.name, "test", d.eval_size, 0, d.prompt_key, d.answer_key)  # fixed across seeds
    sampler = PromptSampler(len(train_rows), cfg.seed)
    reward_set = RewardSet([RewardSpec(fn=x.fn, weight=x.weight, kwargs=dict(x.kwargs)) for x in cfg.reward],
                           timeout_s=cfg.reward_timeout_s, on_error=cfg.on_reward_error)
    offpolicy = t.offpolicy or ("decoupled" if cfg.max_staleness > 0 else "none")
    loss_cfg = LossConfig(clip_low=t.clip_low, clip_high=t.clip_high, dual_clip_c=t.dual_clip_c, agg=t.loss_agg,
                          max_len=r.max_new_tokens, kl_coef=t.kl_coef, offpolicy=offpolicy, is_cap=t.is_cap)
    advantage_fn = ADVANTAGES.get(t.advantage)
    G = r.num_generations

    def score_fn(prompt_indices: list[int], samples: list[Sample]):
        rows = [train_rows[i] for i in prompt_indices]
        completions = tok.batch_decode([x.completion_ids for x in samples], skip_special_tokens=True)
        out = score(reward_set, rows, G, completions)
        return out.rewards, out.valid, out.metrics

    def write_workers(infos: list[dict]) -> None:
        atomic_write_text(run.path / "workers.json", json.dumps(infos, indent=2))

    start_step, before, ctrl_state = 0, None, None
    latest = run.latest_checkpoint()
    if latest is not None:
        state = load_checkpoint(latest[1], policy, sampler)
        start_step, before, ctrl_state = state["step"], state["eval_before"], state.get("controller")
        run.truncate_metrics(start_step)
        log.info(f"resumed from {latest[1]} at step {start_step}")

    pool, ray_started = start_workers(cfg, model_dir, run)
    ctrl = None
    tracker = None
    try:
        ctrl = RolloutController(
            pool, prompt_ids=[tok(row["prompt"])["input_ids"] for row in train_rows], sampler=sampler,
            score_fn=score_fn, group_size=G, groups_per_step=r.prompts_per_step, max_staleness=cfg.max_staleness,
            prompts_per_task=r.prompts_per_task or -(-r.prompts_per_step // c.rollout_workers),
            sampling=SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p),
            seed=cfg.seed, last_step=cfg.max_steps, start_version=start_step,
            inflight_per_worker=c.max_inflight_per_worker, max_restarts=c.max_worker_restarts,
            sync_tol=t.sync_check_tol, on_workers_changed=write_workers)
        if ctrl_state:
            ctrl.load_state_dict(ctrl_state)
        ctrl.publish(policy.merged_state_dict(), start_step)
        eval_engine = WorkerEngine(ctrl)
        if before is None:
            before = evaluate(eval_engine, tok, eval_rows, cfg)["eval/accuracy"]
            run.log_metrics(0, {"eval/accuracy": before}, tensorboard=cfg.log.tensorboard)
        log.info(f"held-out accuracy before training: {before:.3f} ({len(eval_rows)} problems)")

        tracker = Tracker(run, cfg.max_steps, start_step, progress=cfg.log.progress, tensorboard=cfg.log.tensorboard,
                          every=cfg.log.every, show={"reward/mean": "reward", "eval/accuracy": "acc",
                                                     "perf/tokens_per_s": "tok/s"}, desc="grpo")
        last_eval = before
        probe: list[Sample] = []  # fixed weight-sync probe: the first samples this process generates
        recompute = t.recompute_old_logprobs or t.ppo_epochs > 1 or cfg.max_staleness > 0

        def has_signal(g) -> bool:  # DAPO dynamic sampling: a group whose rewards all agree teaches nothing
            return not bool(zero_std_groups(g.rewards, torch.zeros(G, dtype=torch.long), g.valid).all())

        for step in range(start_step + 1, cfg.max_steps + 1):
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
            m["dynamic_sampling/groups"] = len(groups)
            if not groups:
                m["dynamic_sampling/skipped_step"] = 1.0
                ctrl.publish(policy.merged_state_dict(), step)  # the version advances even without an update
                tracker.log(step, m)
                continue
            rewards_t = torch.cat([g.rewards for g in groups])
            valid_t = torch.cat([g.valid for g in groups])
            gids_t = torch.arange(len(groups)).repeat_interleave(G)
            adv = advantage_fn(rewards_t, gids_t, valid_t)  # [B]
            batch = collate(samples, adv, rewards_t, gids_t, tok.pad_token_id)
            batch.response_mask *= valid_t[:, None].float()  # dropped samples do not train
            m.update(staleness_metrics(batch, step, cfg.max_staleness))
            # update
            t1 = time.time()
            m.update(update(policy, batch, cfg, loss_cfg, recompute))
            t_train = time.time() - t1
            # publish the new weights to every worker (+ the probe check, verified asynchronously by each worker)
            t2 = time.time()
            weights = policy.merged_state_dict()
            check = t.sync_check_every and step % t.sync_check_every == 0 and probe
            ctrl.publish(weights, step, probe if check else None, probe_logprobs(policy, probe) if check else None)
            t_sync = time.time() - t2
            gen_tokens = sum(len(x.completion_ids) for x in samples)
            m.update({"perf/gen_s": t_gen, "perf/train_s": t_train, "perf/sync_s": t_sync,
                      "perf/step_s": time.time() - t0, "perf/tokens_per_s": gen_tokens / max(time.time() - t0, 1e-9),
                      "perf/samples_per_s": len(samples) / max(time.time() - t0, 1e-9),
                      "perf/trainer_idle_frac": m["perf/trainer_wait_s"] / max(time.time() - t0, 1e-9)})
            if step == cfg.max_steps or (cfg.eval.every and step % cfg.eval.every == 0):
                last_eval = evaluate(eval_engine, tok, eval_rows, cfg)["eval/accuracy"]
                m["eval/accuracy"] = last_eval
            if step == cfg.max_steps:
                ctrl.drain_checks(m)
            for k, v in m.items():
                if isinstance(v, float) and math.isnan(v) and not k.startswith("reward/"):
                    raise OrchardError(f"metric {k} is NaN at step {step}: training diverged (lower trainer.lr?); "
                                       f"the last complete checkpoint is intact, resume with --resume")
            tracker.log(step, m)
            if step == cfg.max_steps or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
                save_checkpoint(run, step, policy, sampler, {"eval_before": before, "controller": ctrl.state_dict()},
                                cfg.checkpoint.keep)
        ledger = dict(ctrl.stats, outstanding=ctrl.sched.n_outstanding)
    finally:
        if tracker is not None:
            tracker.close()
        pool.close()
        if ray_started:
            import ray

            ray.shutdown()
    after = last_eval
    summary = {"algo": "grpo", "steps": cfg.max_steps, "eval/accuracy_before": before, "eval/accuracy_after": after,
               "eval/accuracy_gain": after - before, "eval/size": len(eval_rows), "model": str(model_dir),
               "engine": r.engine, "device": str(policy.device), "backend": c.backend, "rollout_workers": c.rollout_workers,
               "max_staleness": cfg.max_staleness, "rollout_ledger": ledger, "wall_time_s": time.time() - t_start,
               "final_checkpoint": str(run.latest_checkpoint()[1]) if run.latest_checkpoint() else None}
    log.info(f"held-out accuracy: {before:.3f} -> {after:.3f} ({after - before:+.3f})")
    return summary

