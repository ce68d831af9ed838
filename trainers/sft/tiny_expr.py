"""Zoo model `tiny-expr`: the policy of the sandboxed-reward recipe (`configs/grpo_expression_tiny.yaml`).

`random-3m` warm-started, as `tiny-arith` is, by a short supervised run (trainers/sft/train.py) on the `make_number` train split
(`37,45=82:` -> `37+45`), with labels from a noisy teacher that picks the wrong operator where the digits make it
easy to (a carry in a sum, a borrow in a difference) with probability `teacher_op_error`. The model learns both
operators there, so the right expression is in its distribution but often not its mode: the regime where RL with a
verifier (here: the expression executed in the sandbox) sharpens it. The build checks itself on held-out problems
(greedy accuracy in a band, pass@k above a floor) and is not cached outside it. The check parses `a+b` / `a-b`
completions with a regular expression and computes them here; nothing the model wrote is executed at build time.
"""
from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from rl.zoo import ARCHS, MODELS, ZooBuildError, ZooModel, build_tokenizer, init_random_model

TINY_EXPR_SFT = {"max_steps": 3000, "batch_size": 128, "lr": 1e-3, "warmup": 100, "stop_below": 0.2,
                 "cooldown": 300, "train_rows": 6000, "teacher_op_error": 0.6}
TINY_EXPR_BAND = {"greedy_min": 0.35, "greedy_max": 0.85, "pass_at_k_min": 0.85, "k": 8, "problems": 300}
_EXPR = re.compile(r"(\d+)([+-])(\d+)")


def expr_teacher(rows: list[dict], error_rate: float, seed: int) -> list[dict]:
    """Labels (`answer` = the expression to imitate) from a sloppy teacher: on a sum whose units carry, or a
    difference whose units borrow, it writes the other operator with probability `error_rate`."""
    import numpy as np

    rng = np.random.default_rng([seed, 23])
    out = []
    for r in rows:
        a, b = r["numbers"]
        op = r["reference"][len(str(a))]
        hard = (a % 10 + b % 10 >= 10) if op == "+" else (a % 10 < b % 10)
        if hard and rng.random() < error_rate:
            op = "-" if op == "+" else "+"
        out.append({"prompt": r["prompt"], "answer": f"{a}{op}{b}"})
    return out


def judge(completion: str, row: dict) -> bool:
    """Host-side check without executing anything: `a+b` or `a-b` with the row's numbers in order, equal to the
    target."""
    m = _EXPR.fullmatch(completion.strip())
    if not m or [int(m.group(1)), int(m.group(3))] != list(row["numbers"]):
        return False
    a, b = int(m.group(1)), int(m.group(3))
    return (a + b if m.group(2) == "+" else a - b) == int(row["answer"])


def build_tiny_expr(out_dir: Path, seed: int) -> dict:
    import time

    import torch

    from envs.datasets import load_prompts
    from trainers.sft.train import sft

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible rounding and no oversubscription, as tiny-arith
    t0 = time.time()
    tok = build_tokenizer()
    model = init_random_model(ARCHS["3m"], tok, seed)
    s = TINY_EXPR_SFT
    rows = expr_teacher(load_prompts("make_number", "train", s["train_rows"], seed), s["teacher_op_error"], seed)
    try:
        losses = sft(model, tok, rows, s["max_steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
                     warmup=s["warmup"], stop_below=s["stop_below"], cooldown=s["cooldown"])
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return {"sft_steps": len(losses), "final_sft_loss": sum(losses[-20:]) / 20, "build_s": time.time() - t0,
            "torch_threads": 1}


def expr_quality(model_dir: Path, problems: int, k: int, max_new_tokens: int = 8) -> dict:
    """Greedy accuracy, pass@k and per-sample accuracy (temperature 1, fixed seed) on the make_number test split."""
    from transformers import AutoTokenizer

    from envs.datasets import load_prompts
    from rollout.hf_engine import HFEngine
    from rollout.types import SamplingParams

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = load_prompts("make_number", "test", problems, 0)
    prompts = [tok(r["prompt"])["input_ids"] for r in rows]
    engine = HFEngine(str(model_dir), seed=0)

    def correct(samples, n) -> list[bool]:
        texts = tok.batch_decode([x.completion_ids for x in samples], skip_special_tokens=True)
        return [judge(t, rows[j // n]) for j, t in enumerate(texts)]

    greedy = correct(engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)), 1)
    sampled = correct(engine.generate([p for p in prompts for _ in range(k)],
                                      SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=1)), k)
    per_problem = [sampled[i * k:(i + 1) * k] for i in range(len(rows))]
    return {"problems": len(rows), "greedy_accuracy": sum(greedy) / len(rows),
            f"pass@{k}": sum(any(h) for h in per_problem) / len(rows), "sample_accuracy": sum(sampled) / len(sampled)}


def check_tiny_expr(out_dir: Path, seed: int, record: dict) -> dict:
    b = TINY_EXPR_BAND
    q = expr_quality(out_dir, b["problems"], b["k"])
    g, p = q["greedy_accuracy"], q[f"pass@{b['k']}"]
    if not (b["greedy_min"] <= g <= b["greedy_max"] and p >= b["pass_at_k_min"]):
        raise ZooBuildError(
            f"zoo model 'tiny-expr' (seed {seed}) built outside its band: greedy held-out accuracy {g:.3f} (expected "
            f"{b['greedy_min']:.2f}-{b['greedy_max']:.2f}), pass@{b['k']} {p:.3f} (expected >= {b['pass_at_k_min']:.2f})"
            f" on {q['problems']} held-out problems; final SFT loss {record.get('final_sft_loss', float('nan')):.3f}. "
            f"The model was not cached. This is a bug in the warm-start recipe (trainers/sft/tiny_expr.py TINY_EXPR_SFT): "
            f"please report it with this message")
    return {"held_out": q, "band": b}


MODELS.register("tiny-expr")(ZooModel(
    build=build_tiny_expr, check=check_tiny_expr,
    recipe={"kind": "sft", "base": asdict(ARCHS["3m"]), "sft": TINY_EXPR_SFT, "band": TINY_EXPR_BAND,
            "dataset": "make_number", "version": 1}))
