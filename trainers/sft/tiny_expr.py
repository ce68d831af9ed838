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

from rl.zoo import ARCHS, MODELS, ZooModel
from trainers.sft.warm_start import build_sft_model, check_band, held_out_quality

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
    from envs.datasets import load_prompts

    s = TINY_EXPR_SFT
    rows = expr_teacher(load_prompts("make_number", "train", s["train_rows"], seed), s["teacher_op_error"], seed)
    return build_sft_model(out_dir, seed, rows, s)


def check_tiny_expr(out_dir: Path, seed: int, record: dict) -> dict:
    b = TINY_EXPR_BAND
    q = held_out_quality(out_dir, "make_number", b["problems"], b["k"], judge, max_new_tokens=8)
    return check_band("tiny-expr", seed, q, b, record, "trainers/sft/tiny_expr.py TINY_EXPR_SFT")


MODELS.register("tiny-expr")(ZooModel(
    build=build_tiny_expr, check=check_tiny_expr,
    recipe={"kind": "sft", "base": asdict(ARCHS["3m"]), "sft": TINY_EXPR_SFT, "band": TINY_EXPR_BAND,
            "dataset": "make_number", "version": 1}))
