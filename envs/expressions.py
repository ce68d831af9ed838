"""`make_number`: write a Python expression from two given numbers that makes a target (a two-number Countdown).

A prompt `37,45=82:` asks for an expression using 37 and 45 (in that order, each once) whose value is 82; the
reference completion is `37+45`. About two thirds of the problems are sums of two two-digit numbers, the rest
differences `a-b` with a > b. Rows carry `answer` (the target, a string) and `numbers` (the two ints), the column `python_expression` uses
to refuse expressions with other numbers in them (so `82` or `82+0` does not pass).
"""
from __future__ import annotations

import numpy as np

from envs.datasets import DATASETS, _split_of
from rl.errors import ConfigError


def make_number_problem(a: int, b: int, op: str) -> dict:
    target = a + b if op == "+" else a - b
    return {"prompt": f"{a},{b}={target}:", "answer": str(target), "numbers": [int(a), int(b)],
            "reference": f"{a}{op}{b}"}


@DATASETS.register("make_number")
def make_number(split: str, size: int, seed: int) -> list[dict]:
    """Problems drawn with a seeded RNG and kept if a fixed hash of the prompt puts them in `split` (1 in 5 is
    test). There are 8100 sums and 4005 differences (a > b), about 2400 of them in the test split."""
    if split not in ("train", "test"):
        raise ConfigError(f"dataset 'make_number': unknown split '{split}' (train or test)")
    limit = 9000 if split == "train" else 2000
    if size > limit:
        raise ConfigError(f"dataset 'make_number': size {size} exceeds the {limit} {split} problems it draws from")
    rng = np.random.default_rng([seed, 2 if split == "train" else 3])
    rows, seen = [], set()
    while len(rows) < size:
        a, b = (int(x) for x in rng.integers(10, 100, size=2))
        op = "+" if rng.random() < 0.5 else "-"
        if op == "-" and a <= b:
            continue
        row = make_number_problem(a, b, op)
        if row["prompt"] in seen or _split_of(row["prompt"]) != split:
            continue
        seen.add(row["prompt"])
        rows.append(row)
    return rows
