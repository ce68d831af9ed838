"""Prompt datasets from files, read by the `datasets` package: what `data.name` may be besides a registered generator.

- a file: `.jsonl` / `.json` / `.csv` / `.parquet` (`FILE_FORMATS`); sibling files `<stem>.<split>.<ext>` next to it
  are further splits (`qa.jsonl` is `train`, `qa.test.jsonl` is `test`);
- a `datasets` `save_to_disk` directory (a `Dataset`: one `train` split; a `DatasetDict`: its splits);
- a mapping of split names to files of one format (`{train: a.parquet, test: b.parquet}`).

Splits. Training reads the `train` split (or the only one there is). Evaluation reads `data.test_split`: a split
name, or a fraction in (0, 1) of the train split held out with a fixed seed (the same held-out rows for every run
seed; training then never sees them). A split name the data lacks is an error listing the splits it has.

Rows. `data.prompt_key` / `data.answer_key` name the columns that become `prompt` and `answer`; every other column
is kept and reaches the reward functions. `answer` is made a string; `prompt` stays a list of `{role, content}`
messages when it is one (TRL's conversational format) and is made a string otherwise. The first `size` rows of a
split are used, in file order. Every failure is a ConfigError naming the config key and the file (and, for a
missing value, the row: `file.jsonl:<line>` for JSON Lines).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from envs.prompting import check_messages, is_conversation
from rl.errors import ConfigError
from rl.registry import Registry, did_you_mean

FILE_FORMATS: Registry[str] = Registry("dataset file format")
"""File suffix -> the `datasets` builder that reads it."""
FILE_FORMATS.register(".jsonl")("json")
FILE_FORMATS.register(".json")("json")
FILE_FORMATS.register(".csv")("csv")
FILE_FORMATS.register(".parquet")("parquet")

HOLDOUT_SEED = 0
"""Seed of the permutation that holds out a fraction of the train split (`data.test_split: 0.1`)."""


def _quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("datasets").setLevel(logging.ERROR)


def looks_like_file_source(name: Any) -> bool:
    """A mapping of split files, an existing path, or a name with a dataset file suffix."""
    if isinstance(name, Mapping):
        return True
    p = Path(str(name)).expanduser()
    return p.exists() or p.suffix in FILE_FORMATS


def describe(name: Any) -> str:
    return json.dumps(dict(name)) if isinstance(name, Mapping) else str(name)


# --- reading splits -------------------------------------------------------------------------------------------------
def _check_file(p: Path, key: str) -> str:
    """The builder for file `p`; errors for a missing file, an unknown suffix or an empty file."""
    if not p.exists():
        raise ConfigError(f"{key}: file not found: {p}")
    if p.is_dir():
        raise ConfigError(f"{key}: {p} is a directory but not a `datasets` save_to_disk directory (no "
                          f"dataset_dict.json or state.json in it)")
    if p.suffix not in FILE_FORMATS:
        raise ConfigError(f"{key}: {p}: unreadable dataset format '{p.suffix or '(no suffix)'}'; readable: "
                          f"{', '.join(FILE_FORMATS)} files, a `datasets` save_to_disk directory, or a mapping of "
                          f"split names to such files")
    if p.stat().st_size == 0 or (FILE_FORMATS.get(p.suffix) != "parquet" and not p.read_text(errors="replace").strip()):
        raise ConfigError(f"{key}: {p}: the file is empty (no rows)")
    return FILE_FORMATS.get(p.suffix)


def _bad_json_line(p: Path) -> str:
    """Where a JSON Lines file stops parsing: ':<line>: not valid JSON (...)', or '' if every line parses."""
    with open(p) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                return f"{p}:{lineno}: not valid JSON ({e.msg})"
            if not isinstance(obj, dict):
                return f"{p}:{lineno}: each line must be a JSON object, got {type(obj).__name__}"
    return ""


def _load_files(files: dict[str, Path], key: str) -> dict:
    """{split: datasets.Dataset} of `files` (split -> path, one format; each read on its own, so the splits' column
    types need not agree)."""
    from datasets import load_dataset

    builders = {split: _check_file(p, key) for split, p in files.items()}
    if len(set(builders.values())) > 1:
        raise ConfigError(f"{key}: the split files must share one format, got "
                          f"{', '.join(f'{s}: {p.name}' for s, p in files.items())}")
    out = {}
    for split, p in files.items():
        try:
            out[split] = load_dataset(builders[split], data_files={split: str(p)}, split=split)
        except Exception as e:  # datasets wraps the parser's error; name the file (and the line, for JSON Lines)
            where = _bad_json_line(p) if p.suffix == ".jsonl" else ""
            if where:
                raise ConfigError(f"{key}: {where}") from None
            cause = e.__cause__ or e.__context__ or e
            raise ConfigError(f"{key}: cannot read {p} as {builders[split]}: {type(cause).__name__}: "
                              f"{str(cause)[:300]}") from None
    return out


def _siblings(p: Path) -> dict[str, Path]:
    """`<stem>.<split><suffix>` files next to `p`: its other splits."""
    out = {}
    for q in sorted(p.parent.glob(f"{p.stem}.*{p.suffix}")):
        split = q.name[len(p.stem) + 1:-len(p.suffix)]
        if split and "." not in split:
            out[split] = q
    return out


def open_splits(name: Any, key: str = "data.name") -> tuple[dict, dict[str, Path]]:
    """({split name: datasets.Dataset}, {split name: the file it came from}) of a file source."""
    _quiet_datasets()
    if isinstance(name, Mapping):
        if not name:
            raise ConfigError(f"{key}: an empty mapping of split files")
        files = {str(s): Path(str(f)).expanduser() for s, f in name.items()}
        return _load_files(files, key), files
    p = Path(str(name)).expanduser()
    if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
        from datasets import Dataset, load_from_disk

        try:
            ds = load_from_disk(str(p))
        except Exception as e:
            raise ConfigError(f"{key}: cannot read the save_to_disk directory {p}: {type(e).__name__}: {e}") from None
        splits = {"train": ds} if isinstance(ds, Dataset) else dict(ds)
        return splits, {s: p for s in splits}
    files = {"train": p}
    if p.is_file():
        files.update({s: q for s, q in _siblings(p).items() if s != "train"})
    return _load_files(files, key), files


# --- rows -----------------------------------------------------------------------------------------------------------
def _row_where(files: dict[str, Path], split: str, i: int) -> str:
    """`file.jsonl:<line>` for row i of a JSON Lines split, else `file (split s, row i)`."""
    p = files[split]
    if p.suffix == ".jsonl" and p.is_file():
        n = -1
        with open(p) as f:
            for lineno, line in enumerate(f, 1):
                n += bool(line.strip())
                if n == i:
                    return f"{p}:{lineno}"
    return f"{p} (split '{split}', row {i})"


def to_rows(ds, files: dict[str, Path], split: str, size: int, prompt_key: str, answer_key: str,
            indices: list[int] | None = None) -> list[dict]:
    """Rows `indices` (default: all) of split `ds`, at most `size`, mapped to `prompt`/`answer` plus the other columns."""
    cols = list(ds.column_names)
    for key, col in (("data.prompt_key", prompt_key), ("data.answer_key", answer_key)):
        if col not in cols:
            raise ConfigError(f"{key}: no column '{col}'{did_you_mean(col, cols)} in {files[split]} (split "
                              f"'{split}'; columns: {', '.join(cols)})")
    idx = list(range(len(ds))) if indices is None else indices
    idx = idx[:size]
    if not idx:
        raise ConfigError(f"data.name: {files[split]} (split '{split}') has no rows")
    rows = []
    for i, rec in zip(idx, ds.select(idx).to_list()):
        for key, col in (("data.prompt_key", prompt_key), ("data.answer_key", answer_key)):
            if rec.get(col) is None:
                present = [k for k, v in rec.items() if v is not None]
                raise ConfigError(f"{_row_where(files, split, i)}: missing key '{col}'{did_you_mean(col, present)} "
                                  f"(set {key})")
        prompt = rec[prompt_key]
        if isinstance(prompt, list):
            prompt = check_messages(prompt, f"{_row_where(files, split, i)}: column '{prompt_key}'")
        row = {k: v for k, v in rec.items() if k not in (prompt_key, answer_key)}
        row["prompt"] = prompt if is_conversation(prompt) else str(prompt)
        row["answer"] = str(rec[answer_key])
        rows.append(row)
    return rows


def holdout(n: int, fraction: float) -> tuple[list[int], list[int]]:
    """(train indices, test indices) of `n` rows: ceil(fraction * n) held out by a fixed seeded permutation, each
    list in file order."""
    perm = np.random.default_rng(HOLDOUT_SEED).permutation(n)
    k = min(n - 1, max(1, math.ceil(fraction * n)))
    test = set(int(i) for i in perm[:k])
    return [i for i in range(n) if i not in test], sorted(test)


def load_file_rows(name: Any, role: str, size: int, prompt_key: str = "prompt", answer_key: str = "answer",
                   test_split: str | float = "test") -> list[dict]:
    """Rows for `role` ("train", or "test": `test_split`) of a file source (see the module docstring)."""
    splits, files = open_splits(name)
    src = describe(name)
    train_name = "train" if "train" in splits else next(iter(splits)) if len(splits) == 1 else None
    if isinstance(test_split, float):
        if train_name is None:
            raise ConfigError(f"data.name: {src} has splits {', '.join(splits)} but none named 'train' to hold "
                              f"a fraction of out (data.test_split={test_split})")
        tr, te = holdout(len(splits[train_name]), test_split)
        return to_rows(splits[train_name], files, train_name, size, prompt_key, answer_key,
                       tr if role == "train" else te)
    if role == "train":
        if train_name is None:
            raise ConfigError(f"data.name: {src} has no 'train' split (splits: {', '.join(splits)})")
        if train_name == test_split and len(splits) == 1:
            raise ConfigError(f"data.test_split={test_split!r} is the only split of {src}, which training reads too")
        return to_rows(splits[train_name], files, train_name, size, prompt_key, answer_key)
    if test_split not in splits:
        raise ConfigError(f"data.test_split: no split '{test_split}'{did_you_mean(test_split, splits)} in {src} "
                          f"(splits: {', '.join(splits)}); name one of them, add a '<stem>.{test_split}<suffix>' "
                          f"file beside it, or give a fraction (data.test_split=0.1) to hold out rows of the train split")
    return to_rows(splits[test_split], files, test_split, size, prompt_key, answer_key)
