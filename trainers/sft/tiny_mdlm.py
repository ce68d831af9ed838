"""The zoo model `tiny-mdlm`: a small masked-diffusion LM (a bidirectional Llama, `is_causal: false`, with a
`[MASK]` token) warm-started by masked-diffusion SFT (`trainers/sft/masked_diffusion.py`) on `arith_trace` (two-digit
addition with a written trace, `envs/arith_trace.py`) with labels from a noisy teacher that often forgets the carry,
then measured on held-out problems with the `diffusion` engine and refused outside its band.

It is a standard HF directory (config.json with `is_causal: false` and `mask_token_id`, safetensors, tokenizer with
`mask_token`), so stock transformers loads it, and any other local bidirectional mask predictor can replace it
(`model.path=`). Registered into `rl.zoo.MODELS` on import (`rl.zoo.MODEL_PROVIDERS` names this module).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from rl.zoo import MODELS, ArchSpec, ZooModel, build_tokenizer, llama_config
from trainers.sft.warm_start import check_band

MASK = "[MASK]"
CANVAS = 32
"""Canvas length L the model is trained and evaluated with (answers are 17-20 tokens + EOS fill; 2^5 for ASS)."""
TINY_MDLM_ARCH = ArchSpec(hidden=128, layers=3, heads=2, intermediate=384, max_positions=64)
"""0.6M parameters: random-3m's shape took 1.3 s per SFT step here, this one 0.2-0.35 s (shared, busy 2 cores)."""
TINY_MDLM_SFT = {"steps": 3000, "batch_size": 64, "lr": 2e-3, "warmup": 50, "train_rows": 6000,
                 "teacher_carry_error": 0.5, "canvas": CANVAS}
"""teacher_carry_error 0.5: the correct carrying trace stays in the model's distribution (at 0.6 with 3000 steps the
model never sampled one under low-confidence remasking, so GRPO had no positive sample on carry problems)."""
TINY_MDLM_BAND = {"greedy_min": 0.10, "greedy_max": 0.80, "pass_at_k_min": 0.30, "carry_pass_at_k_min": 0.10, "k": 4,
                  "problems": 100}
"""Partly competent: greedy accuracy well short of the ceiling, the right trace often among k samples, and on the
problems whose units carry (which the teacher gets wrong half the time) sometimes: RL has something to reinforce."""


def mdlm_tokenizer():
    """The zoo's character tokenizer plus a `[MASK]` special token."""
    tok = build_tokenizer()
    tok.add_special_tokens({"mask_token": MASK})
    return tok


def noisy_teacher(rows: list[dict], error_rate: float, seed: int) -> list[dict]:
    """On problems whose units carry, the teacher writes the carry-forgetting trace with probability `error_rate`."""
    import numpy as np

    from envs.arith_trace import trace

    rng = np.random.default_rng([seed, 18])
    out = []
    for r in rows:
        if carries(r) and rng.random() < error_rate:
            r = {**r, "answer": trace(r["a"], r["b"], forget_carry=True)}
        out.append(r)
    return out


def build_tiny_mdlm(out_dir: Path, seed: int) -> dict:
    """A 0.6M bidirectional Llama (TINY_MDLM_ARCH), trained with the masked-diffusion loss on one torch thread."""
    import torch
    from transformers import LlamaForCausalLM

    from envs.datasets import load_prompts
    from trainers.sft.masked_diffusion import mdlm_sft

    s = TINY_MDLM_SFT
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.time()
    tok = mdlm_tokenizer()
    cfg = llama_config(TINY_MDLM_ARCH, tok)
    cfg.is_causal = False
    cfg.mask_token_id = tok.mask_token_id
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    rows = noisy_teacher(load_prompts("arith_trace", "train", s["train_rows"], seed), s["teacher_carry_error"], seed)
    try:
        losses = mdlm_sft(model, tok, rows, s["canvas"], s["steps"], s["batch_size"], s["lr"], seed, s["warmup"])
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return {"sft_steps": len(losses), "final_sft_loss": sum(losses[-50:]) / 50, "build_s": time.time() - t0,
            "torch_threads": 1}


def carries(row: dict) -> bool:
    """Whether the units of `row`'s a + b carry (the problems the noisy teacher gets wrong)."""
    return (row["a"] % 10) + (row["b"] % 10) >= 10


def held_out_quality(model_dir: Path, problems: int, k: int, L: int = CANVAS) -> dict:
    """Greedy accuracy and pass@k (temperature 1, seed 1) with the default decoding (uniform, L steps, one block,
    low-confidence remasking) on the `arith_trace` test split, judged by `exact_match`, overall and on the problems
    whose units carry."""
    from transformers import AutoTokenizer

    from envs.datasets import load_prompts
    from rewards.builtin import exact_match
    from rollout.diffusion_engine import DiffusionEngine
    from rollout.types import SamplingParams

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = load_prompts("arith_trace", "test", problems, 0)
    prompts = [tok(r["prompt"])["input_ids"] for r in rows]
    engine = DiffusionEngine(str(model_dir), seed=0, estimator="cj_grpo")

    def judge(samples, n) -> list[bool]:
        texts = tok.batch_decode([x.completion_ids for x in samples], skip_special_tokens=True)
        return [s > 0.5 for s in exact_match([], texts, [rows[j // n]["answer"] for j in range(len(texts))])]

    greedy = judge(engine.generate(prompts, SamplingParams(max_new_tokens=L, temperature=0.0)), 1)
    sampled = judge(engine.generate([p for p in prompts for _ in range(k)],
                                    SamplingParams(max_new_tokens=L, temperature=1.0, seed=1)), k)
    solved = [any(sampled[i * k:(i + 1) * k]) for i in range(len(rows))]
    carry = [i for i, r in enumerate(rows) if carries(r)]
    return {"problems": len(rows), "greedy_accuracy": sum(greedy) / len(rows),
            f"pass@{k}": sum(solved) / len(rows), "sample_accuracy": sum(sampled) / len(sampled),
            "carry_problems": len(carry), "greedy_accuracy_carry": sum(greedy[i] for i in carry) / max(1, len(carry)),
            f"pass@{k}_carry": sum(solved[i] for i in carry) / max(1, len(carry))}


def check_tiny_mdlm(out_dir: Path, seed: int, record: dict) -> dict:
    """zoo.json's `held_out` and `band`, or ZooBuildError (nothing cached) outside the band."""
    b = TINY_MDLM_BAND
    q = held_out_quality(out_dir, b["problems"], b["k"])
    return check_band("tiny-mdlm", seed, q, b, record, "trainers/sft/tiny_mdlm.py TINY_MDLM_SFT",
                      floors={f"pass@{b['k']} on carrying problems": (q[f"pass@{b['k']}_carry"],
                                                                        b["carry_pass_at_k_min"])})


MODELS.register("tiny-mdlm")(ZooModel(
    build=build_tiny_mdlm, check=check_tiny_mdlm,
    recipe={"kind": "mdlm_sft", "arch": asdict(TINY_MDLM_ARCH), "sft": TINY_MDLM_SFT, "band": TINY_MDLM_BAND,
            "dataset": "arith_trace", "version": 1}))
