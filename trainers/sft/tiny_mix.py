"""Zoo model `tiny-mix`: the seed of branch-train-merge (`configs/btm_tiny.yaml`), partly competent on three
arithmetic domains: addition (`arithmetic`), `subtraction` and `multiplication` (envs/arith_domains.py).

It starts from `tiny-arith` (which already writes digits and stops; built first if it is not cached) and is trained
further by the zoo's SFT loop (trainers/sft/train.py) on a mixture of the three domains' train splits, labelled by a
noisy teacher that drops the carry or borrow of the units digit with probability `teacher_error`:
`37+45` -> 72, `82-37` -> 55, `37*4` -> 128. The model learns both answers, so the right one is in its distribution
but often not its mode in every domain: room for RL with a verifier. The build measures each domain's held-out split
(greedy accuracy in a band, pass@k above a floor) and is not cached outside it.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from rl.zoo import ARCHS, MODELS, ZooModel
from trainers.sft.warm_start import build_sft_model, check_band, held_out_quality

DOMAINS = ("arithmetic", "subtraction", "multiplication")
TINY_MIX_SFT = {"max_steps": 2000, "batch_size": 128, "lr": 5e-4, "warmup": 50, "stop_below": 0.15,
                "cooldown": 300, "teacher_error": 0.6,
                "rows": {"arithmetic": 1000, "subtraction": 1500, "multiplication": 4000},
                "distinct": {"arithmetic": 1500, "subtraction": 1500, "multiplication": 575}}
"""Multiplication gets the most rows: with tiny-arith's start, addition is mostly known already. A first recipe with
equal rows (1500 each, stop_below 0.2) left multiplication at pass@8 0.41; 2500 multiplication rows gave exactly the
old floor, 0.500, on one machine and 0.464 on another (a 2-vCPU AMD EPYC with AVX-512, where `tiny-arith` itself
builds differently), so a fresh clone there could not build it; 4000 rows gave 0.500 there."""
TINY_MIX_BAND = {"greedy_min": 0.15, "greedy_max": 0.9, "pass_at_k_min": 0.4, "k": 8, "problems": 140}
"""pass@8 >= 0.4 (was 0.5): the floor refuses a model whose right answers are too rare for GRPO's 8 samples to find.
It sits 0.1 below what the recipe gives (0.500 for multiplication, 0.86 for the others), a margin for the way float
arithmetic differs across CPUs: the floor is a check against a broken build, not a target."""
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def units_slip(a: int, op: str, b: int) -> int | None:
    """The teacher's wrong answer when the units digit carries (+, *) or borrows (-), ignoring that carry or
    borrow; None when there is none to forget."""
    if op == "+" and a % 10 + b % 10 >= 10:
        return a + b - 10
    if op == "-" and a % 10 < b % 10:
        return a - b + 10
    if op == "*" and (a % 10) * b >= 10:
        return a * b - 10 * ((a % 10) * b // 10)
    return None


def parse(prompt: str) -> tuple[int, str, int]:
    """`37*4=` -> (37, "*", 4)."""
    body = prompt.rstrip("=")
    op = next(c for c in "+-*" if c in body)
    a, b = body.split(op)
    return int(a), op, int(b)


def mix_teacher(rows: list[dict], error_rate: float, seed: int) -> list[dict]:
    """The rows with the teacher's label: the slip of `units_slip` with probability `error_rate`, else the answer."""
    rng = np.random.default_rng([seed, 41])
    out = []
    for r in rows:
        slip = units_slip(*parse(r["prompt"]))
        out.append({**r, "answer": str(slip)} if slip is not None and rng.random() < error_rate else r)
    return out


def mixture_rows(seed: int, distinct: dict[str, int], rows: dict[str, int]) -> list[dict]:
    """`rows[name]` train rows of each domain, resampled with replacement from `distinct[name]` distinct problems
    (multiplication has only 575 train problems)."""
    from envs.datasets import load_prompts

    rng = np.random.default_rng([seed, 43])
    rows_n, rows = rows, []
    for name in DOMAINS:
        pool = load_prompts(name, "train", distinct[name], seed)
        rows.extend(pool[i] for i in rng.integers(0, len(pool), rows_n[name]))
    return rows


def build_tiny_mix(out_dir: Path, seed: int) -> dict:
    from rl.zoo import build

    s = TINY_MIX_SFT
    base = build("tiny-arith", seed=seed)
    rows = mix_teacher(mixture_rows(seed, s["distinct"], s["rows"]), s["teacher_error"], seed)
    return {"base": str(base), **build_sft_model(out_dir, seed, rows, s, init=base)}


def answer_correct(completion: str, row: dict) -> bool:
    from trainers.sft.tiny_arith import exact_answer

    return exact_answer(completion, row)


def check_tiny_mix(out_dir: Path, seed: int, record: dict) -> dict:
    """Every domain's held-out quality (-> zoo.json's `held_out`); ZooBuildError naming the domain outside the band."""
    b = TINY_MIX_BAND
    quality = {name: held_out_quality(out_dir, name, b["problems"], b["k"], answer_correct) for name in DOMAINS}
    for name, q in quality.items():
        check_band(f"tiny-mix, domain {name}", seed, q, b, record, "trainers/sft/tiny_mix.py TINY_MIX_SFT")
    return {"held_out": quality, "band": b}


MODELS.register("tiny-mix")(ZooModel(
    build=build_tiny_mix, check=check_tiny_mix,
    recipe={"kind": "sft", "base": "tiny-arith", "arch": asdict(ARCHS["3m"]), "sft": TINY_MIX_SFT,
            "band": TINY_MIX_BAND, "domains": list(DOMAINS), "version": 1}))
