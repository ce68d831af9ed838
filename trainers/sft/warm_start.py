"""What every SFT warm start of the zoo shares: build (random-3m + the SFT loop on one torch thread), measure on
held-out problems, and refuse a model outside its recipe's band. The providers (`tiny_arith.py`, `tiny_expr.py`)
keep only their data, teacher, correctness test and numbers."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from rl.zoo import ARCHS, ZooBuildError, build_tokenizer, init_random_model


def build_sft_model(out_dir: Path, seed: int, rows: list[dict], sft_cfg: dict, init: Path | None = None) -> dict:
    """`random-3m` (or, given `init`, the HF model there) trained by `trainers.sft.train.sft` on `rows` with the
    recipe's settings, saved to `out_dir`.

    One torch thread: the same float rounding on every machine whatever its core count (a 2.6M model gains little
    from more threads), and no OpenMP oversubscription slowdown when something else is running."""
    import torch

    from trainers.sft.train import sft

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.time()
    if init is None:
        tok = build_tokenizer()
        model = init_random_model(ARCHS["3m"], tok, seed)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(init)
        model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    s = sft_cfg
    try:
        losses = sft(model, tok, rows, s["max_steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
                     warmup=s["warmup"], stop_below=s["stop_below"], cooldown=s["cooldown"])
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return {"sft_steps": len(losses), "final_sft_loss": sum(losses[-20:]) / 20, "build_s": time.time() - t0,
            "torch_threads": 1}


def held_out_quality(model_dir: Path, dataset: str, problems: int, k: int, correct: Callable[[str, dict], bool],
                     max_new_tokens: int = 16) -> dict:
    """Greedy accuracy, pass@k and per-sample accuracy (temperature 1, fixed seed) on a dataset's test split (the
    problems the GRPO recipes evaluate on); `correct(completion text, row)` judges one completion."""
    from transformers import AutoTokenizer

    from envs.datasets import load_prompts
    from rollout.hf_engine import HFEngine
    from rollout.types import SamplingParams

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = load_prompts(dataset, "test", problems, 0)
    prompts = [tok(r["prompt"])["input_ids"] for r in rows]
    engine = HFEngine(str(model_dir), seed=0)

    def judge(samples, n) -> list[bool]:
        texts = tok.batch_decode([x.completion_ids for x in samples], skip_special_tokens=True)
        return [correct(t, rows[j // n]) for j, t in enumerate(texts)]

    greedy = judge(engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)), 1)
    sampled = judge(engine.generate([p for p in prompts for _ in range(k)],
                                    SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=1)), k)
    per_problem = [sampled[i * k:(i + 1) * k] for i in range(len(rows))]
    return {"problems": len(rows), "greedy_accuracy": sum(greedy) / len(rows),
            f"pass@{k}": sum(any(h) for h in per_problem) / len(rows), "sample_accuracy": sum(sampled) / len(sampled)}


def check_band(name: str, seed: int, quality: dict, band: dict, record: dict, recipe_ref: str,
               floors: dict[str, tuple[float, float]] | None = None) -> dict:
    """zoo.json's `held_out` and `band`, or ZooBuildError (nothing is cached) if `quality` is outside `band`:
    greedy accuracy within [greedy_min, greedy_max] and pass@k >= pass_at_k_min, and every extra
    `floors[label] = (measured, minimum)` met (e.g. tiny-mdlm's pass@k on the problems whose units carry)."""
    b = band
    g, p = quality["greedy_accuracy"], quality[f"pass@{b['k']}"]
    floors = floors or {}
    extra = "".join(f", {label} {v:.3f} (expected >= {lo:.2f})" for label, (v, lo) in floors.items())
    if not (b["greedy_min"] <= g <= b["greedy_max"] and p >= b["pass_at_k_min"]
            and all(v >= lo for v, lo in floors.values())):
        raise ZooBuildError(
            f"zoo model '{name}' (seed {seed}) built outside its band: greedy held-out accuracy {g:.3f} (expected "
            f"{b['greedy_min']:.2f}-{b['greedy_max']:.2f}), pass@{b['k']} {p:.3f} (expected >= {b['pass_at_k_min']:.2f})"
            f"{extra} on {quality['problems']} held-out problems; final SFT loss "
            f"{record.get('final_sft_loss', float('nan')):.3f}. The model was not cached. This is a bug in the "
            f"warm-start recipe ({recipe_ref}): please report it with this message")
    return {"held_out": quality, "band": b}
