"""The make_number dataset and the tiny-expr warm start's teacher and judge (no model built here)."""
import pytest

from envs.datasets import load_prompts
from rl.errors import ConfigError
from trainers.sft.tiny_expr import expr_teacher, judge


def test_rows_splits_and_columns():
    train = load_prompts("make_number", "train", 500, 0)
    test = load_prompts("make_number", "test", 300, 0)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert load_prompts("make_number", "test", 300, 5) == load_prompts("make_number", "test", 300, 5)
    for r in train[:50] + test[:50]:
        a, b = r["numbers"]
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert r["prompt"] == f"{a},{b}={r['answer']}:"
        assert int(r["answer"]) in (a + b, a - b) and int(r["answer"]) > 0
        assert judge(r["reference"], r)
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        load_prompts("make_number", "dev", 1, 0)


def test_teacher_errs_only_on_carries_and_borrows():
    rows = [{"prompt": "37,45=82:", "answer": "82", "numbers": [37, 45], "reference": "37+45"},  # carry
            {"prompt": "31,45=76:", "answer": "76", "numbers": [31, 45], "reference": "31+45"},  # no carry
            {"prompt": "52,18=34:", "answer": "34", "numbers": [52, 18], "reference": "52-18"},  # borrow
            {"prompt": "58,12=46:", "answer": "46", "numbers": [58, 12], "reference": "58-12"}]  # no borrow
    always = expr_teacher(rows, 1.0, 0)
    assert [r["answer"] for r in always] == ["37-45", "31+45", "52+18", "58-12"]
    assert [r["answer"] for r in expr_teacher(rows, 0.0, 0)] == [r["reference"] for r in rows]


def test_judge_parses_without_executing():
    row = {"answer": "82", "numbers": [37, 45]}
    assert judge("37+45", row) and judge(" 37+45 ", row)
    assert not judge("45+37", row)  # the numbers in the prompt's order
    assert not judge("37-45", row) and not judge("82", row) and not judge("37+45+0", row)
    assert not judge("__import__('os')", row)
