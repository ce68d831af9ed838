"""Prompt datasets for single-turn LLM jobs: registered generators and user .jsonl files.

Every row is a dict with at least `prompt` and `answer` (strings); other columns reach reward functions as kwargs.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from rl.errors import ConfigError
from rl.registry import Registry, did_you_mean

DATASETS: Registry = Registry("dataset", providers=("envs.expressions",))
"""Prompt datasets by name; `providers` are modules that register more when first looked up (make_number: the
sandboxed-reward recipe's task, envs/expressions.py)."""


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


def load_jsonl(path: Path, prompt_key: str, answer_key: str, size: int) -> list[dict]:
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{lineno}: each line must be a JSON object, got {type(obj).__name__}")
            for key in (prompt_key, answer_key):
                if key not in obj:
                    raise ConfigError(f"{path}:{lineno}: missing key '{key}'{did_you_mean(key, obj)} "
                                      f"(set data.prompt_key / data.answer_key)")
            row = {k: v for k, v in obj.items() if k not in (prompt_key, answer_key)}
            row["prompt"], row["answer"] = str(obj[prompt_key]), str(obj[answer_key])
            rows.append(row)
            if len(rows) == size:
                break
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return rows


def load_prompts(name_or_path: str, split: str, size: int, seed: int, prompt_key: str = "prompt",
                 answer_key: str = "answer") -> list[dict]:
    """Rows from a registered dataset, or from a .jsonl file. For files, `split` selects `<stem>.<split>.jsonl`
    next to the file if it exists (e.g. data.train.jsonl / data.test.jsonl), else the file itself."""
    p = Path(name_or_path).expanduser()
    if p.suffix == ".jsonl" or p.exists():
        if not p.is_file():
            raise ConfigError(f"data.name: file not found: {p}")
        sibling = p.with_name(f"{p.stem}.{split}.jsonl")
        return load_jsonl(sibling if sibling.is_file() else p, prompt_key, answer_key, size)
    if name_or_path not in DATASETS:
        raise ConfigError(f"data.name: '{name_or_path}' is neither a .jsonl file nor a registered dataset"
                          f"{did_you_mean(name_or_path, DATASETS.names())}; known: {', '.join(DATASETS.names())}")
    return DATASETS.get(name_or_path)(split, size, seed)

