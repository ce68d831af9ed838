"""Orchard GRPO vs TRL's GRPOTrainer: seconds per step and reward after N steps, same model/data/reward/steps.

Both run the default recipe's setting (tiny-arith, arithmetic prompts, exact_match reward, G=8, 16 prompts per
step, one optimizer step per batch, lr, no KL, HF generation) one after the other in fresh subprocesses, then the
same greedy held-out evaluator scores both final models. TRL is a bench-only extra (`pip install trl==1.16.0`).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rl.bench.common import run_child, write_report


def add_arguments(p) -> None:
    import argparse

    p.add_argument("--steps", type=int, default=20, help="training steps for each system")
    p.add_argument("--config", default="configs/grpo_tiny.yaml", help="the Orchard recipe both systems mirror")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads for each system (0: all cores)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds one system's run may take before the bench stops it and fails (default 3600)")
    p.add_argument("--worker", choices=["orchard", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)


def _settings(config: str, seed: int, steps: int):
    from rl.config import load_config

    return load_config(config, [f"seed={seed}", f"max_steps={steps}", "eval.every=0", "checkpoint.every=0",
                                "log.progress=false", "log.tensorboard=false"])


def _run_orchard(a) -> dict:
    from rl.cli import launch

    work = Path(a.workdir)
    summary = launch(a.config, [f"seed={a.seed}", f"max_steps={a.steps}", "eval.every=0", "checkpoint.every=0",
                                "log.progress=false", "log.tensorboard=false", f"run_dir={work / 'orchard'}"])
    rows = [json.loads(x) for x in (work / "orchard" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] >= 1]
    return {"step_s": [r["perf/step_s"] for r in steps], "reward": [r["reward/mean"] for r in steps],
            "accuracy_before": summary["eval/accuracy_before"], "accuracy_after": summary["eval/accuracy_after"]}


def _run_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from envs.datasets import load_prompts
    from rewards import load_reward_fn
    from rl.zoo import resolve_model_path
    from trainers.grpo.evaluate import evaluate_model

    cfg = _settings(a.config, a.seed, a.steps)
    r, t, d = cfg.rollout, cfg.trainer, cfg.data
    model_dir = resolve_model_path(cfg.model.path)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = load_prompts(d.name, "train", d.train_size, cfg.seed, d.prompt_key, d.answer_key)
    ds = Dataset.from_list(rows)
    reward_fns = []
    for spec in cfg.reward:
        _, fn = load_reward_fn(spec.fn)
        reward_fns.append(fn)
    batch = r.prompts_per_step * r.num_generations
    args = GRPOConfig(output_dir=str(Path(a.workdir) / "trl"), per_device_train_batch_size=batch,
                      num_generations=r.num_generations, max_completion_length=r.max_new_tokens,
                      temperature=r.temperature, learning_rate=t.lr, adam_beta1=t.betas[0], adam_beta2=t.betas[1],
                      weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, lr_scheduler_type="constant",
                      beta=t.kl_coef, num_iterations=t.ppo_epochs, epsilon=t.clip_low, epsilon_high=t.clip_high,
                      loss_type="grpo", scale_rewards="group", max_steps=a.steps, logging_steps=1,
                      save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(), seed=cfg.seed,
                      disable_tqdm=True, use_vllm=False, dataloader_num_workers=0, bf16=False)
    stamps: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            stamps.append(time.time())

        def on_step_end(self, *_, **__):
            stamps[-1] = time.time() - stamps[-1]

    trainer = GRPOTrainer(model=model, reward_funcs=reward_fns, args=args, train_dataset=ds, processing_class=tok,
                          callbacks=[Timer()])
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    out_dir = Path(a.workdir) / "trl" / "final"
    trainer.model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    cfg.model.path = str(out_dir)
    after = evaluate_model(cfg)["eval/accuracy"]
    return {"step_s": stamps, "reward": rewards, "accuracy_before": None, "accuracy_after": after}


def _summarise(name: str, res: dict, last: int = 5) -> dict:
    step_s = res["step_s"][1:] or res["step_s"]  # the first step includes warm-up
    return {"system": name, "steps": len(res["step_s"]), "s_per_step": statistics.median(step_s),
            "s_per_step_mean": statistics.fmean(step_s), "reward_first": res["reward"][0] if res["reward"] else None,
            f"reward_last{last}": statistics.fmean(res["reward"][-last:]) if res["reward"] else None,
            "heldout_acc_after": res["accuracy_after"]}


def run(a) -> dict:
    if a.worker:
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        res = _run_orchard(a) if a.worker == "orchard" else _run_trl(a)
        Path(a.workdir, f"{a.worker}.json").write_text(json.dumps(res))
        return res
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("rl bench grpo needs TRL: `.venv/bin/pip install trl==1.16.0` (or `pip install -e .[bench]`)")
    from rl.zoo import resolve_model_path

    resolve_model_path(_settings(a.config, a.seed, a.steps).model.path)  # build the model once, outside the timings
    results = {}
    with tempfile.TemporaryDirectory(prefix="orchard-bench-grpo-") as work:
        for system in ("orchard", "trl"):
            cmd = [sys.executable, "-m", "rl.cli", "bench", "grpo", "--worker", system, "--workdir", work,
                   "--steps", str(a.steps), "--config", a.config, "--seed", str(a.seed), "--threads", str(a.threads)]
            t0 = time.time()
            run_child(cmd, label=f"rl bench grpo: the {system} run", timeout=a.timeout,
                      env={**os.environ, "TQDM_DISABLE": "1"}, capture=False)
            results[system] = json.loads(Path(work, f"{system}.json").read_text())
            results[system]["wall_s"] = time.time() - t0
    rows = [_summarise(name, res) for name, res in results.items()]
    speedup = rows[1]["s_per_step"] / rows[0]["s_per_step"]
    notes = (f"Orchard is **{speedup:.2f}x** faster per step than TRL GRPOTrainer (median s/step, steps after the first; "
             f"{a.steps} steps each, same model/data/reward/batch, HF generation). Held-out accuracy before training: "
             f"{results['orchard']['accuracy_before']:.3f}.")
    write_report("grpo", rows, a.out, extra={"speedup_s_per_step": speedup, "raw": results, "steps": a.steps}, notes=notes)
    return {"rows": rows, "speedup": speedup}
