"""Two more arithmetic task domains beside `arithmetic` (two-digit addition), for branch-train-merge
(`trainers/btm/`): `subtraction` (`82-37=` -> `45`, a >= b, both two-digit) and `multiplication` (`37*4=` -> `148`,
a two-digit number times one digit 2-9).

Both enumerate every problem once, keep those a fixed hash of the prompt puts in the requested split (1 in 5 is
test, as `arithmetic` does: `envs.datasets._split_of`), and take a seeded random subset of them. Rows are
`{prompt, answer}`, so the built-in `exact_match` reward scores them.
"""
from __future__ import annotations

import numpy as np

from envs.datasets import DATASETS, _split_of
from rl.errors import ConfigError


def _draw(name: str, problems: list[tuple[str, str]], split: str, size: int, seed: int, stream: int) -> list[dict]:
    """`size` distinct problems of `split`, in a seeded random order (`stream` keeps datasets' draws apart)."""
    if split not in ("train", "test"):
        raise ConfigError(f"dataset '{name}': unknown split '{split}' (train or test)")
    pool = [(p, a) for p, a in problems if _split_of(p) == split]
    if size > len(pool):
        raise ConfigError(f"dataset '{name}': size {size} exceeds the {len(pool)} distinct {split} problems")
    order = np.random.default_rng([seed, stream, 0 if split == "train" else 1]).permutation(len(pool))[:size]
    return [{"prompt": pool[i][0], "answer": pool[i][1]} for i in order]


@DATASETS.register("subtraction")
def subtraction(split: str, size: int, seed: int) -> list[dict]:
    """Two-digit subtraction with a non-negative result, `82-37=` -> `45`: 4095 problems (a >= b), 839 of
    them in the test split."""
    problems = [(f"{a}-{b}=", str(a - b)) for a in range(10, 100) for b in range(10, a + 1)]
    return _draw("subtraction", problems, split, size, seed, stream=31)


@DATASETS.register("multiplication")
def multiplication(split: str, size: int, seed: int) -> list[dict]:
    """A two-digit number times one digit, `37*4=` -> `148`: 720 problems, 145 of them in the test split."""
    problems = [(f"{a}*{b}=", str(a * b)) for a in range(10, 100) for b in range(2, 10)]
    return _draw("multiplication", problems, split, size, seed, stream=37)
