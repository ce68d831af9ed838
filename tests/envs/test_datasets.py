"""Prompt datasets: disjoint deterministic splits, jsonl loading and its errors."""
import json

import pytest

from envs.datasets import DATASETS, load_prompts
from rl.errors import ConfigError


def test_arithmetic_splits_are_disjoint_and_deterministic():
    train = load_prompts("arithmetic", "train", 3000, seed=0)
    test = load_prompts("arithmetic", "test", 500, seed=0)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert load_prompts("arithmetic", "train", 50, seed=0) == train[:50]
    assert load_prompts("arithmetic", "train", 50, seed=1) != train[:50]
    a, b = train[0]["prompt"][:-1].split("+")
    assert train[0]["answer"] == str(int(a) + int(b))


def test_arithmetic_rejects_impossible_sizes():
    with pytest.raises(ConfigError, match="exceeds"):
        load_prompts("arithmetic", "test", 5000, seed=0)


def test_jsonl_and_split_siblings(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text("\n".join(json.dumps({"q": f"q{i}", "a": i, "level": i % 2}) for i in range(5)))
    rows = load_prompts(str(p), "train", 3, 0, prompt_key="q", answer_key="a")
    assert rows == [{"level": 0, "prompt": "q0", "answer": "0"}, {"level": 1, "prompt": "q1", "answer": "1"},
                    {"level": 0, "prompt": "q2", "answer": "2"}]
    (tmp_path / "qa.test.jsonl").write_text(json.dumps({"q": "held", "a": "out"}))
    assert load_prompts(str(p), "test", 10, 0, "q", "a") == [{"prompt": "held", "answer": "out"}]


def test_jsonl_errors_name_file_line_and_key(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "answer": "b"}\n{"promt": "c", "answer": "d"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: missing key 'prompt' \(did you mean 'promt'\?\)"):
        load_prompts(str(p), "train", 10, 0)
    p.write_text('{"prompt": "a", "answer": "b"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: not valid JSON"):
        load_prompts(str(p), "train", 10, 0)
    with pytest.raises(ConfigError, match="file not found"):
        load_prompts(str(tmp_path / "none.jsonl"), "train", 10, 0)


def test_unknown_dataset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'arithmetic'"):
        load_prompts("arithmetc", "train", 10, 0)
    assert "arithmetic" in DATASETS
