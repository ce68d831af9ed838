"""The zoo model `tiny-arith`, the default recipe's policy: `random-3m` warm-started by supervised steps on two-digit
addition with labels from a noisy teacher, then measured on held-out problems and refused outside its band.

Registered into `rl.zoo.MODELS` on import; `rl.zoo.MODEL_PROVIDERS` names this module so the registry imports it
the first time it is read. The recipe dict (and so its hash, part of the cache key) is unchanged by the move out of
rl/zoo.py: a model cached before is found and reused.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from rl.zoo import ARCHS, MODELS, ZooModel
from trainers.sft.warm_start import build_sft_model, check_band, held_out_quality


# The default policy's warm start (see build_tiny_arith). Measured over seeds 0-2 from empty caches (README).
TINY_ARITH_SFT = {"max_steps": 3000, "batch_size": 128, "lr": 1e-3, "warmup": 100, "stop_below": 0.2,
                  "cooldown": 300, "train_rows": 6000, "teacher_carry_error": 0.6}
TINY_ARITH_BAND = {"greedy_min": 0.40, "greedy_max": 0.85, "pass_at_k_min": 0.85, "k": 8, "problems": 300}
"""The regime RL needs: partly competent (greedy accuracy well above chance but short of the ceiling) with the
right answer usually somewhere in the sampled distribution (pass@k at temperature 1)."""


def noisy_teacher(rows: list[dict], error_rate: float, seed: int) -> list[dict]:
    """Labels from a sloppy teacher: on problems whose units digits carry, it forgets the carry (37+45 -> 72)
    with probability `error_rate`. A model imitating it holds both answers; a verifier reward can sharpen it."""
    import numpy as np

    rng = np.random.default_rng([seed, 17])
    out = []
    for r in rows:
        a, b = (int(x) for x in r["prompt"].rstrip("=").split("+"))
        if (a % 10) + (b % 10) >= 10 and rng.random() < error_rate:
            r = {**r, "answer": str(a + b - 10)}
        out.append(r)
    return out


def build_tiny_arith(out_dir: Path, seed: int) -> dict:
    """The default policy: `random-3m` warm-started by a short supervised run on two-digit addition (train split
    only) with labels from a noisy teacher that often forgets the units carry. It is partly competent: the right
    answer is in its distribution but often not its mode, as with pretrained LLMs before RL with a verifier."""
    from envs.datasets import load_prompts

    s = TINY_ARITH_SFT
    rows = noisy_teacher(load_prompts("arithmetic", "train", s["train_rows"], seed), s["teacher_carry_error"], seed)
    return build_sft_model(out_dir, seed, rows, s)


def exact_answer(completion: str, row: dict) -> bool:
    """The built-in `exact_match` reward's verdict on one completion."""
    from rewards.builtin import exact_match

    return exact_match([row["prompt"]], [completion], [row["answer"]])[0] > 0.5


def check_tiny_arith(out_dir: Path, seed: int, record: dict) -> dict:
    """Measure the warm start on held-out problems (-> zoo.json's `held_out`) and refuse a model outside the band."""
    b = TINY_ARITH_BAND
    q = held_out_quality(out_dir, "arithmetic", b["problems"], b["k"], exact_answer)
    return check_band("tiny-arith", seed, q, b, record, "trainers/sft/tiny_arith.py TINY_ARITH_SFT")


MODELS.register("tiny-arith")(ZooModel(
    build=build_tiny_arith, check=check_tiny_arith,
    recipe={"kind": "sft", "base": asdict(ARCHS["3m"]), "sft": TINY_ARITH_SFT, "band": TINY_ARITH_BAND,
            "dataset": "arithmetic", "version": 2}))
