"""The subtraction and multiplication domains: correct answers, disjoint splits, seeded draws, named size errors."""
import pytest

from envs.datasets import DATASETS, load_prompts
from rl.errors import ConfigError


@pytest.mark.parametrize("name,op", [("subtraction", "-"), ("multiplication", "*")])
def test_rows_are_correct_and_splits_disjoint(name, op):
    train = load_prompts(name, "train", 500, 0)
    test = load_prompts(name, "test", 100, 0)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    for r in train + test:
        a, b = r["prompt"].rstrip("=").split(op)
        assert int(r["answer"]) == (int(a) - int(b) if op == "-" else int(a) * int(b)) >= 0
    assert load_prompts(name, "train", 50, 3) == load_prompts(name, "train", 50, 3)
    assert load_prompts(name, "train", 50, 3) != load_prompts(name, "train", 50, 4)


def test_sizes_and_splits_are_named():
    assert {"subtraction", "multiplication"} <= set(DATASETS.names())
    assert len(load_prompts("multiplication", "train", 575, 0)) == 575  # 720 problems, 145 of them test
    with pytest.raises(ConfigError, match="dataset 'multiplication': size 576 exceeds the 575 distinct train problems"):
        load_prompts("multiplication", "train", 576, 0)
    with pytest.raises(ConfigError, match="dataset 'subtraction': unknown split 'dev'"):
        DATASETS.get("subtraction")("dev", 1, 0)
