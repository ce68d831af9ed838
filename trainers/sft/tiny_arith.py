"""The zoo model `tiny-arith`, the default recipe's policy: `random-3m` warm-started by supervised steps on two-digit
addition with labels from a noisy teacher, then measured on held-out problems and refused outside its band.

Registered into `rl.zoo.MODELS` on import; `rl.zoo.MODEL_PROVIDERS` names this module so the registry imports it
the first time it is read. The recipe dict (and so its hash, part of the cache key) is unchanged by the move out of
rl/zoo.py: a model cached before is found and reused.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from rl.zoo import ARCHS, MODELS, ZooBuildError, ZooModel, build_tokenizer, init_random_model


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
    import time

    import torch

    from envs.datasets import load_prompts
    from trainers.sft.train import sft

    # One thread: the same float rounding on every machine whatever its core count (a 2.6M model gains little from
    # more threads here), and no OpenMP oversubscription slowdown when something else is running.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.time()
    tok = build_tokenizer()
    model = init_random_model(ARCHS["3m"], tok, seed)
    s = TINY_ARITH_SFT
    rows = noisy_teacher(load_prompts("arithmetic", "train", s["train_rows"], seed), s["teacher_carry_error"], seed)
    try:
        losses = sft(model, tok, rows, s["max_steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
                     warmup=s["warmup"], stop_below=s["stop_below"], cooldown=s["cooldown"])
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return {"sft_steps": len(losses), "final_sft_loss": sum(losses[-20:]) / 20, "build_s": time.time() - t0,
            "torch_threads": 1}


def held_out_quality(model_dir: Path, dataset: str, problems: int, k: int, max_new_tokens: int = 16) -> dict:
    """Greedy accuracy, pass@k and per-sample accuracy (temperature 1, fixed seed) on a dataset's test split (the
    same problems the GRPO recipes evaluate on), scored by exact match."""
    from envs.datasets import load_prompts
    from rewards.builtin import exact_match
    from rollout.hf_engine import HFEngine
    from rollout.types import SamplingParams
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = load_prompts(dataset, "test", problems, 0)
    prompts = [tok(r["prompt"])["input_ids"] for r in rows]
    answers = [r["answer"] for r in rows]
    engine = HFEngine(str(model_dir), seed=0)

    def correct(samples, n) -> list[bool]:
        texts = tok.batch_decode([x.completion_ids for x in samples], skip_special_tokens=True)
        scores = exact_match([r["prompt"] for r in rows for _ in range(n)], texts, [a for a in answers for _ in range(n)])
        return [v > 0.5 for v in scores]

    greedy = correct(engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)), 1)
    sampled = correct(engine.generate([p for p in prompts for _ in range(k)],
                                      SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=1)), k)
    per_problem = [sampled[i * k:(i + 1) * k] for i in range(len(rows))]
    return {"problems": len(rows), "greedy_accuracy": sum(greedy) / len(rows),
            f"pass@{k}": sum(any(h) for h in per_problem) / len(rows), "sample_accuracy": sum(sampled) / len(sampled)}


def check_tiny_arith(out_dir: Path, seed: int, record: dict) -> dict:
    """Measure the warm start on held-out problems (-> zoo.json's `held_out`) and refuse a model outside the band."""
    b = TINY_ARITH_BAND
    q = held_out_quality(out_dir, "arithmetic", b["problems"], b["k"])
    g, p = q["greedy_accuracy"], q[f"pass@{b['k']}"]
    if not (b["greedy_min"] <= g <= b["greedy_max"] and p >= b["pass_at_k_min"]):
        raise ZooBuildError(
            f"zoo model 'tiny-arith' (seed {seed}) built outside its band: greedy held-out accuracy {g:.3f} (expected "
            f"{b['greedy_min']:.2f}-{b['greedy_max']:.2f}), pass@{b['k']} {p:.3f} (expected >= {b['pass_at_k_min']:.2f}) "
            f"on {q['problems']} held-out problems; final SFT loss {record.get('final_sft_loss', float('nan')):.3f}. The model was not "
            f"cached. This is a bug in the warm-start recipe (trainers/sft/tiny_arith.py TINY_ARITH_SFT): please "
            f"report it with this message")
    return {"held_out": q, "band": b}


MODELS.register("tiny-arith")(ZooModel(
    build=build_tiny_arith, check=check_tiny_arith,
    recipe={"kind": "sft", "base": asdict(ARCHS["3m"]), "sft": TINY_ARITH_SFT, "band": TINY_ARITH_BAND,
            "dataset": "arithmetic", "version": 2}))
