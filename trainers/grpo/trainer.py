"""GRPO and its variants (Dr. GRPO, DAPO), read top to bottom.

One step = generate -> score -> advantage -> update -> sync weights -> log/evaluate/checkpoint.
Every sample carries its behaviour log-probs and policy versions, so off-policy correction
(`trainer.offpolicy`) and asynchronous rollouts slot in without changing this loop's shape.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rewards import RewardSet, RewardSpec
from rl.errors import OrchardError, WeightSyncError
from rl.rundir import RunDir
from rl.seeding import rng_state, seed_everything, set_rng_state
from rl.zoo import resolve_model_path
from rollout.engine import make_engine, policy_logprobs
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


def update(policy: Policy, batch: RolloutBatch, cfg: GRPOConfig, loss_cfg: LossConfig) -> dict:
    """`ppo_epochs` optimizer steps over the batch, accumulating gradients over micro-batches so that the
    result equals one full-batch step (each micro-batch's loss is weighted by its share of the aggregate)."""
    t, T = cfg.trainer, max(cfg.rollout.temperature, 1e-6)
    B = len(batch)
    dev = policy.device
    with torch.no_grad():
        old = batch.behav_logprobs
        if t.recompute_old_logprobs or t.ppo_epochs > 1:
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
            inputs = LossInputs(logprobs=lp.float(), old_logprobs=old[idx].to(dev), behav_logprobs=mb.behav_logprobs.to(dev),
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
def verify_sync(engine, policy: Policy, probe: list[Sample], tol: float, step: int, engine_name: str, n_tensors: int) -> float:
    """Score the probe batch with the trainer and the engine at T=1; raise WeightSyncError above `tol`."""
    z = torch.zeros(len(probe))
    b = collate(probe, z, z, z.long(), policy.tokenizer.pad_token_id)
    was_training = policy.model.training
    policy.model.eval()
    ours = policy_logprobs(policy.model, b.input_ids.to(policy.device), b.attention_mask.to(policy.device), b.prompt_len, 1.0)
    policy.model.train(was_training)
    theirs = engine.score([s.prompt_ids for s in probe], [s.completion_ids for s in probe], 1.0)
    err = 0.0
    for i, (s, row) in enumerate(zip(probe, theirs)):
        n = len(s.completion_ids)
        if n:
            err = max(err, (ours[i, :n].float().cpu() - torch.tensor(row)).abs().max().item())
    if not err <= tol:
        raise WeightSyncError(f"weight sync check failed after step {step}: rollout engine '{engine_name}' log-probs "
                              f"differ from the trainer's by {err:.3g} > trainer.sync_check_tol={tol:g} on a probe batch "
                              f"of {len(probe)} samples ({n_tensors} tensors synced)")
    return err


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
def train(cfg: GRPOConfig, run: RunDir) -> dict:
    from envs.datasets import load_prompts
    from rl.progress import Tracker

    t_start = time.time()
    seed_everything(cfg.seed)
    model_dir = resolve_model_path(cfg.model.path)
    policy = build_policy(cfg, model_dir)
    tok = policy.tokenizer
    d = cfg.data
    train_rows = load_prompts(d.name, "train", d.train_size, cfg.seed, d.prompt_key, d.answer_key)
    eval_rows = load_prompts(d.name, "test", d.eval_size, 0, d.prompt_key, d.answer_key)  # fixed across seeds
    sampler = PromptSampler(len(train_rows), cfg.seed)
    reward_set = RewardSet([RewardSpec(fn=r.fn, weight=r.weight, kwargs=dict(r.kwargs)) for r in cfg.reward],
                           timeout_s=cfg.reward_timeout_s, on_error=cfg.on_reward_error)
    r = cfg.rollout
    engine = make_engine(r.engine, str(model_dir), dtype=cfg.model.dtype, seed=cfg.seed, max_batch=r.max_batch,
                         max_model_len=r.vllm.max_model_len, gpu_memory_utilization=r.vllm.gpu_memory_utilization,
                         enforce_eager=r.vllm.enforce_eager)
    t = cfg.trainer
    loss_cfg = LossConfig(clip_low=t.clip_low, clip_high=t.clip_high, dual_clip_c=t.dual_clip_c, agg=t.loss_agg,
                          max_len=r.max_new_tokens, kl_coef=t.kl_coef, offpolicy=t.offpolicy, is_cap=t.is_cap)
    advantage_fn = ADVANTAGES.get(t.advantage)

    start_step, before = 0, None
    latest = run.latest_checkpoint()
    if latest is not None:
        state = load_checkpoint(latest[1], policy, sampler)
        start_step, before = state["step"], state["eval_before"]
        run.truncate_metrics(start_step)
        log.info(f"resumed from {latest[1]} at step {start_step}")
    engine.update_weights(policy.merged_state_dict().items(), version=start_step)
    if before is None:
        before = evaluate(engine, tok, eval_rows, cfg)["eval/accuracy"]
        run.log_metrics(0, {"eval/accuracy": before}, tensorboard=cfg.log.tensorboard)
    log.info(f"held-out accuracy before training: {before:.3f} ({len(eval_rows)} problems)")

    tracker = Tracker(run, cfg.max_steps, start_step, progress=cfg.log.progress, tensorboard=cfg.log.tensorboard,
                      every=cfg.log.every, show={"reward/mean": "reward", "eval/accuracy": "acc", "perf/tokens_per_s": "tok/s"},
                      desc="grpo")
    sampling_base = SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p)
    last_eval = before
    probe: list[Sample] = []  # fixed weight-sync probe: the first samples this process generates
    try:
        for step in range(start_step + 1, cfg.max_steps + 1):
            t0 = time.time()
            # generate + score (+ DAPO dynamic sampling: keep only groups whose rewards differ)
            samples, rewards, valid, group_ids, m = [], [], [], [], {}
            gen_tokens, rounds, n_groups = 0, 0, 0
            while n_groups < r.prompts_per_step:
                rows = [train_rows[i] for i in sampler.next(r.prompts_per_step)]
                sp = SamplingParams(**{**sampling_base.__dict__, "seed": (cfg.seed * 1_000_003 + step * 101 + rounds) % 2**31})
                s, completions = generate(engine, tok, rows, r.num_generations, sp)
                out = score(reward_set, rows, r.num_generations, completions)
                gen_tokens += sum(len(x.completion_ids) for x in s)
                gids = torch.arange(len(rows)).repeat_interleave(r.num_generations)
                if rounds == 0:
                    m.update(out.metrics)
                    m["reward/mean"] = out.rewards[out.valid].mean().item() if out.valid.any() else float("nan")
                    m["reward/std"] = out.rewards[out.valid].std().item() if out.valid.sum() > 1 else 0.0
                    m["response/length_mean"] = sum(len(x.completion_ids) for x in s) / len(s)
                    m["response/stop_frac"] = sum(x.finish_reason == "stop" for x in s) / len(s)
                keep = torch.ones(len(rows), dtype=torch.bool)
                if t.dynamic_sampling:
                    flat = ~zero_std_groups(out.rewards, gids, out.valid)  # [B] sample in a group with signal
                    keep = flat.view(len(rows), r.num_generations).all(dim=1)
                for g in torch.nonzero(keep).flatten().tolist():
                    if n_groups == r.prompts_per_step:
                        break
                    sl = slice(g * r.num_generations, (g + 1) * r.num_generations)
                    samples += s[sl]
                    rewards.append(out.rewards[sl])
                    valid.append(out.valid[sl])
                    group_ids.append(torch.full((r.num_generations,), n_groups))
                    n_groups += 1
                rounds += 1
                if not t.dynamic_sampling or rounds > t.max_resample_rounds:
                    break
            t_gen = time.time() - t0
            if not probe:
                probe = [x for x in samples if x.completion_ids][:8]
            if not samples:
                m["dynamic_sampling/skipped_step"] = 1.0
                tracker.log(step, m)
                continue
            rewards_t, valid_t, gids_t = torch.cat(rewards), torch.cat(valid), torch.cat(group_ids)
            adv = advantage_fn(rewards_t, gids_t, valid_t)  # [B]
            batch = collate(samples, adv, rewards_t, gids_t, tok.pad_token_id)
            batch.response_mask *= valid_t[:, None].float()  # dropped samples do not train
            m["dynamic_sampling/groups"] = n_groups
            m["dynamic_sampling/rounds"] = rounds
            # update
            t1 = time.time()
            m.update(update(policy, batch, cfg, loss_cfg))
            t_train = time.time() - t1
            # sync weights to the rollout engine
            t2 = time.time()
            weights = policy.merged_state_dict()
            engine.update_weights(weights.items(), version=step)
            t_sync = time.time() - t2
            if t.sync_check_every and step % t.sync_check_every == 0 and probe:
                m["sync/probe_max_abs_err"] = verify_sync(engine, policy, probe, t.sync_check_tol, step, r.engine, len(weights))
            m.update({"perf/gen_s": t_gen, "perf/train_s": t_train, "perf/sync_s": t_sync,
                      "perf/step_s": time.time() - t0, "perf/tokens_per_s": gen_tokens / max(t_gen, 1e-9),
                      "offpolicy/staleness_mean": float((step - 1) - batch.versions[batch.response_mask > 0].float().mean())
                      if batch.response_mask.any() else 0.0})
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.max_steps:
                last_eval = evaluate(engine, tok, eval_rows, cfg)["eval/accuracy"]
                m["eval/accuracy"] = last_eval
            if step == cfg.max_steps:
                last_eval = evaluate(engine, tok, eval_rows, cfg)["eval/accuracy"]
                m["eval/accuracy"] = last_eval
            for k, v in m.items():
                if isinstance(v, float) and math.isnan(v) and not k.startswith("reward/"):
                    raise OrchardError(f"metric {k} is NaN at step {step}: training diverged (lower trainer.lr?); "
                                       f"the last complete checkpoint is intact, resume with --resume")
            tracker.log(step, m)
            if step == cfg.max_steps or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
                save_checkpoint(run, step, policy, sampler, {"eval_before": before}, cfg.checkpoint.keep)
    finally:
        tracker.close()
        engine.close()
    after = last_eval
    summary = {"algo": "grpo", "steps": cfg.max_steps, "eval/accuracy_before": before, "eval/accuracy_after": after,
               "eval/accuracy_gain": after - before, "eval/size": len(eval_rows), "model": str(model_dir),
               "engine": r.engine, "wall_time_s": time.time() - t_start,
               "final_checkpoint": str(run.latest_checkpoint()[1]) if run.latest_checkpoint() else None}
    log.info(f"held-out accuracy: {before:.3f} -> {after:.3f} ({after - before:+.3f})")
    return summary
