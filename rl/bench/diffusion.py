"""`rl bench diffusion`: decoding schedules and RL estimators for masked-diffusion LMs, side by side in one run.

1. Decoding: held-out accuracy (greedy, `exact_match` on the `arith_trace` test split), denoising forward passes per
   sample and canvas tokens/s for each schedule of the `diffusion` engine (uniform with L steps, semi-AR blocks,
   ASS, EOSER+ASS, Fast-dLLM threshold, CreditDecoding) on the untrained warm start (`tiny-mdlm`) and on every
   trained run given with `--runs` (its last checkpoint). Goal: threshold or credit decoding at >= 3x fewer forward
   passes than uniform L-step decoding with <= 1 point accuracy loss (`goal_*` in the JSON).
2. Training (with `--runs`): each run's held-out accuracy before / after, its steps and seconds per step (from its
   summary.json and metrics.jsonl), and its final checkpoint decoded with ASS (log2 L steps) and uniform L steps:
   the paper's claim in miniature is CJ-GRPO with EOSER+ASS at few steps matching diffu-GRPO at many.
Train the runs first: `rl train configs/cj_grpo_tiny.yaml run_dir=runs/cj` (and diffu_grpo_tiny.yaml).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from rl.bench.common import markdown_table, write_report

L = 32
SCHEDULES = {
    "uniform L steps": {"schedule": "uniform"},
    "semi-AR 4 blocks, L steps": {"schedule": "uniform", "block_length": 8},
    "ASS (log2 L steps)": {"schedule": "ass"},
    "EOSER+ASS": {"schedule": "ass", "eoser": True},
    "threshold 0.9": {"schedule": "threshold", "threshold": 0.9},
    "CreditDecoding 0.9": {"schedule": "credit", "threshold": 0.9},
}


def add_arguments(p) -> None:
    p.add_argument("--model", default="tiny-mdlm", help="the untrained masked-diffusion model (zoo name or directory)")
    p.add_argument("--runs", default="", help="comma list of label=run_dir of trained runs (e.g. cj=runs/cj)")
    p.add_argument("--problems", type=int, default=200, help="held-out problems per cell")


def decode_cell(model_dir: Path, rows: list[dict], opts: dict) -> dict:
    """Greedy accuracy, forwards per sample and tokens/s of one decoding setting."""
    import torch
    from transformers import AutoTokenizer

    from rewards.builtin import exact_match
    from rollout.diffusion_engine import DecodingOptions, DiffusionEngine
    from rollout.types import SamplingParams

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    engine = DiffusionEngine(str(model_dir), seed=0, estimator="cj_grpo", options=DecodingOptions(**opts))
    prompts = [tok(r["prompt"])["input_ids"] for r in rows]
    t0 = time.perf_counter()
    out = engine.generate(prompts, SamplingParams(max_new_tokens=L, temperature=0.0))
    dt = time.perf_counter() - t0
    texts = tok.batch_decode([s.completion_ids for s in out], skip_special_tokens=True)
    acc = sum(exact_match([], texts, [r["answer"] for r in rows])) / len(rows)
    return {"accuracy": acc, "forwards_per_sample": sum(engine.last_forwards) / len(rows),
            "tokens_per_s": len(rows) * L / dt}


def run(args) -> dict:
    from envs.datasets import load_prompts
    from rl.zoo import resolve_model_path

    rows = load_prompts("arith_trace", "test", args.problems, 0)
    models = {"untrained": resolve_model_path(args.model)}
    runs = dict(x.split("=", 1) for x in args.runs.split(",") if x)
    for label, run_dir in runs.items():
        ckpts = sorted((Path(run_dir) / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        if not ckpts:
            raise FileNotFoundError(f"--runs {label}={run_dir}: no checkpoints/step-N in the run directory")
        models[label] = ckpts[-1] / "model"
    decoding, goal = [], {}
    for label, d in models.items():
        cells = {name: decode_cell(d, rows, opts) for name, opts in SCHEDULES.items()}
        base = cells["uniform L steps"]
        for name, c in cells.items():
            decoding.append({"model": label, "schedule": name, **c,
                             "fewer_forwards_x": base["forwards_per_sample"] / c["forwards_per_sample"]})
        for fast in ("threshold 0.9", "CreditDecoding 0.9"):
            c = cells[fast]
            goal[f"{label}/{fast}"] = {"fewer_forwards_x": base["forwards_per_sample"] / c["forwards_per_sample"],
                                       "accuracy_loss_points": 100 * (base["accuracy"] - c["accuracy"]),
                                       "met": base["forwards_per_sample"] >= 3 * c["forwards_per_sample"]
                                       and 100 * (base["accuracy"] - c["accuracy"]) <= 1.0}
    training = []
    for label, run_dir in runs.items():
        import yaml

        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
        metrics = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        step_s = [m["perf/step_s"] for m in metrics if "perf/step_s" in m]
        ass = next(r for r in decoding if r["model"] == label and r["schedule"] == "EOSER+ASS")
        uni = next(r for r in decoding if r["model"] == label and r["schedule"] == "uniform L steps")
        training.append({"run": label, "estimator": cfg["model"]["estimator"],
                         "rollout decoding": ", ".join(f"{k}={v}" for k, v in cfg["rollout"]["decoding"].items()
                                                       if k in ("schedule", "steps", "remasking", "eoser")), "steps": summary.get("steps"),
                         "accuracy_before": summary.get("eval/accuracy_before"),
                         "accuracy_after": summary.get("eval/accuracy_after"),
                         "s_per_step": sum(step_s) / len(step_s) if step_s else None,
                         "after, EOSER+ASS 5 steps": ass["accuracy"], "after, uniform 32 steps": uni["accuracy"]})
    notes = ("Decoding: greedy, low-confidence remasking, canvas L=32, "
             + f"{len(rows)} held-out arith_trace problems, one torch thread. Training accuracies before/after are "
             "each run's own eval decoding (its rollout.decoding).\n\n"
             + ("## Training\n\n" + markdown_table(training)
                if training else "No --runs given: no training table.\n")
             + "\nGoal (>= 3x fewer forwards than uniform L-step, <= 1 point accuracy loss): "
             + ", ".join(f"{k}: {'met' if v['met'] else 'missed'} ({v['fewer_forwards_x']:.2f}x, "
                         f"accuracy {-v['accuracy_loss_points']:+.1f} points)" for k, v in goal.items()) + "\n")
    write_report("diffusion", decoding, args.out, extra={"training": training, "goal": goal}, notes=notes)
    return {"decoding": decoding, "training": training, "goal": goal}
