"""Prompt datasets for single-turn LLM jobs: registered generators and user files (read in `envs/sources.py`).

Every row is a dict with at least `prompt` (a string, or a list of `{role, content}` messages: TRL's conversational
format) and `answer` (a string); other columns reach reward functions as kwargs.
"""
from __future__ import annotations

import zlib

import numpy as np

from rl.errors import ConfigError
from rl.registry import Registry, did_you_mean

DATASETS: Registry = Registry("dataset", providers=("envs.expressions", "envs.chat_data", "envs.arith_domains"))
"""Prompt datasets by name; `providers` are modules that register more when first looked up (make_number: the
sandboxed-reward recipe's task, envs/expressions.py; arithmetic_chat: envs/chat_data.py)."""


def _split_of(key: str) -> str:
    """A fixed hash of the problem decides its split (1 in 5 is test), so train and test never share a problem."""
    return "test" if zlib.crc32(key.encode()) % 5 == 0 else "train"


@DATASETS.register("arithmetic")
def arithmetic(split: str, size: int, seed: int) -> list[dict]:
    """Two-digit addition, e.g. `37+45=` -> `82`.

    Problems are drawn with a seeded RNG and kept only if they fall in `split`; there are 90 x 90 = 8100
    distinct problems, about 1620 of them in the test split.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"dataset 'arithmetic': unknown split '{split}' (train or test)")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    rows, seen = [], set()
    limit = 6400 if split == "train" else 1600
    if size > limit:
        raise ConfigError(f"dataset 'arithmetic': size {size} exceeds the {limit} distinct {split} problems")
    while len(rows) < size:
        a, b = rng.integers(10, 100, size=2)
        prompt = f"{a}+{b}="
        if prompt in seen or _split_of(prompt) != split:
            continue
        seen.add(prompt)
        rows.append({"prompt": prompt, "answer": str(a + b)})
    return rows


def load_prompts(name_or_path, split: str, size: int, seed: int, prompt_key: str = "prompt",
                 answer_key: str = "answer", test_split: str | float = "test") -> list[dict]:
    """Rows of `split` ("train" or "test") from a registered dataset or a file source (`envs/sources.py`: jsonl, json,
    csv, parquet, a save_to_disk directory, or a mapping of split files). "test" reads `test_split`: a split name or,
    for files without one, a held-out fraction of the train split."""
    from envs.sources import load_file_rows, looks_like_file_source

    if looks_like_file_source(name_or_path):
        return load_file_rows(name_or_path, split, size, prompt_key, answer_key, test_split)
    if name_or_path not in DATASETS:
        raise ConfigError(f"data.name: '{name_or_path}' is neither a dataset file (jsonl, json, csv, parquet), a "
                          f"save_to_disk directory, nor a registered dataset"
                          f"{did_you_mean(name_or_path, DATASETS.names())}; known: {', '.join(DATASETS.names())}")
    if split == "test" and test_split != "test":
        if not isinstance(test_split, str):
            raise ConfigError(f"data.test_split={test_split}: a fraction holds out rows of a dataset file; dataset "
                              f"'{name_or_path}' has its own test split (data.test_split=test)")
        split = test_split
    return DATASETS.get(name_or_path)(split, size, seed)
