"""The `arith_trace` dataset: two-digit addition answered with a written trace, for masked-diffusion LMs.

`37+45=` -> `7+5=12,c1,3+4+1=8,82`: the units sum, the carry, the tens sum with the carry, then the result.
Answers are 17-20 characters (one token each under the zoo's character tokenizer), long enough for decoding
schedules (how many tokens a step reveals) to matter, and every part of the trace is checkable: the built-in
`exact_match` reward scores the whole trace. Train/test splits as `arithmetic` (a fixed hash of the problem).
"""
from __future__ import annotations

import numpy as np

from envs.datasets import DATASETS, _split_of
from rl.errors import ConfigError


def trace(a: int, b: int, forget_carry: bool = False) -> str:
    """The written trace of a + b; `forget_carry`: the sloppy version that drops the units carry (37+45 -> 72)."""
    u = a % 10 + b % 10
    carry = 0 if forget_carry else u // 10
    tens = a // 10 + b // 10 + carry
    total = tens * 10 + u % 10
    tens_part = f"{a // 10}+{b // 10}+{carry}={tens}" if carry else f"{a // 10}+{b // 10}={tens}"
    return f"{a % 10}+{b % 10}={u},c{carry},{tens_part},{total}"


@DATASETS.register("arith_trace")
def arith_trace(split: str, size: int, seed: int) -> list[dict]:
    """Rows `{prompt: "37+45=", answer: "7+5=12,c1,3+4+1=8,82", a, b}` of `split` (train or test)."""
    if split not in ("train", "test"):
        raise ConfigError(f"dataset 'arith_trace': unknown split '{split}' (train or test)")
    limit = 6400 if split == "train" else 1600
    if size > limit:
        raise ConfigError(f"dataset 'arith_trace': size {size} exceeds the {limit} distinct {split} problems")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, 7])
    rows, seen = [], set()
    while len(rows) < size:
        a, b = (int(x) for x in rng.integers(10, 100, size=2))
        prompt = f"{a}+{b}="
        if prompt in seen or _split_of(prompt) != split:
            continue
        seen.add(prompt)
        rows.append({"prompt": prompt, "answer": trace(a, b), "a": a, "b": b})
    return rows
