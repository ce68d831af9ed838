"""The sandboxed rewards (`python_expression`, `code_tests`) on hand-written cases, run in the real sandbox."""
import math

import pytest

from rewards import REWARDS, RewardSet, RewardSpec
from rewards.code import count_operators, extract_code, parse_tests, values_equal
from rewards.sandbox import SandboxUnavailable

COVERED = {"python_expression", "code_tests"}  # read by tests/rewards/test_builtin.py's every-reward check

LYING_EQ = "type('A', (), {'__eq__': lambda s, o: True, '__hash__': None})()"


def _values(out, name):
    return [None if math.isnan(v) else v for v in out.per_fn[name].tolist()]


def test_python_expression_values_and_outcomes():
    completions = ["37+45", "9*9+1", "  80 + 2</s>", "82", "100-17", "1/0", "4*", "9**9**9", "(1+1)*" + LYING_EQ]
    # 37+45=82, 9*9+1=82, 80+2=82 (EOS stripped) pass; the bare literal 82 has 0 operators < min_operators=1 and
    # "4*" does not parse: both judged here without running; 100-17=83 is wrong; 1/0 raises; 9**9**9 runs past the
    # CPU limit; the object whose __eq__ always says yes has a repr that is no literal
    rs = RewardSet([RewardSpec(fn="python_expression", kwargs={"min_operators": 1, "timeout_s": 2.0})], timeout_s=60)
    out = rs(["82="] * len(completions), completions, {"answer": ["82"] * len(completions)})
    assert _values(out, "python_expression") == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    m = {k.split("/")[-1]: v for k, v in out.metrics.items() if k.startswith("reward/python_expression/sandbox/")}
    n = len(completions)
    assert m["passed_frac"] == pytest.approx(3 / n)
    assert m["timeout_frac"] == pytest.approx(1 / n)
    assert m["failed_frac"] == pytest.approx(5 / n)
    assert m["crashed_frac"] == 0.0 and m["killed_frac"] == 0.0
    assert m["executions"] == n - 2


def test_python_expression_without_operator_rule_and_other_types():
    completions = ["82", "'82'", "0.1+0.2", "[1]*2", "True", LYING_EQ, "print(82)", "__import__('os').getcwd()"]
    answers = ["82", "82", "0.3", "[1, 1]", "1", "82", "82", "82"]
    got = REWARDS.get("python_expression")(prompts=["p"] * 8, completions=completions, answer=answers)
    # str is not int; floats within 1e-9; lists by ==; a bool is no number; the lying object's repr is no literal;
    # print(82) is None (what it printed is not its value); the sandbox's cwd is '/tmp'
    assert list(got) == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert got.metrics["sandbox/executions"] == 8.0


def test_python_expression_uses_only_the_given_numbers():
    completions = ["37+45", "45+37", "82", "37+45+0", "37*2+8", "37+37+8", "(37+45)</s>"]
    got = REWARDS.get("python_expression")(prompts=["37,45=82:"] * 7, completions=completions, answer=["82"] * 7,
                                           numbers=[[37, 45]] * 6 + ["37,45"])
    # other numbers (82, 0, 2, 8) or a number used twice fail without running; the order is free
    assert list(got) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert got.metrics["sandbox/executions"] == 3.0


def test_operator_count_and_equality():
    import ast
    assert count_operators(ast.parse("9*9+1", mode="eval")) == 2
    assert count_operators(ast.parse("-5", mode="eval")) == 1
    assert count_operators(ast.parse("82", mode="eval")) == 0
    assert values_equal(82.0, 82) and not values_equal(True, 1) and not values_equal(float("nan"), 1.0)


def test_code_tests_fraction_all_or_nothing_fences_and_io():
    completions = [
        "Here you go:\n```python\ndef f(x):\n    return x * 2\n```\nDone.",  # both asserts pass
        "def f(x):\n    return 0",  # f(0)==0 passes, f(2)==4 fails
        "print(int(input()) * 2)",  # io: both pairs
        "print(6)",  # io: one of two (the first input is 3)
        "def f(x): return 1",  # no tests: not applicable
        "import os\nos._exit(0)",  # exits before any test reports
        "print('0 pass')\nprint('1 pass')\ndef f(x): return 0",  # fake result lines lack the token
        f"a = {LYING_EQ}\nprint(6)",  # io judged on the host: the lying object does not help
    ]
    tests = [["assert f(1) == 2", "assert f(3) == 6"], ["assert f(0) == 0", "assert f(2) == 4"],
             [{"input": "3", "output": "6"}, {"input": "5\n", "output": "10\n\n"}],
             [{"input": "3", "output": "6"}, {"input": "5", "output": "10"}], [],
             ["assert f(1) == 2"], "assert f(1) == 2\nassert f(2) == 4", '[{"input": "1", "output": "2"}]']
    fn = REWARDS.get("code_tests")
    frac = fn(prompts=["p"] * 8, completions=completions, tests=tests)
    assert list(frac) == [1.0, 0.5, 1.0, 0.5, None, 0.0, 0.0, 0.0]
    assert frac.metrics["tests_passed_frac"] == pytest.approx(6 / 12)
    assert frac.metrics["sandbox/passed_frac"] == pytest.approx(2 / 7)  # of the 7 applicable samples
    strict = fn(prompts=["p"] * 8, completions=completions, tests=tests, all_or_nothing=True)
    assert list(strict) == [1.0, 0.0, 1.0, 0.0, None, 0.0, 0.0, 0.0]


def test_code_tests_malformed_tests_name_the_sample():
    with pytest.raises(ValueError, match=r"reward 'code_tests': sample 1: tests must be"):
        REWARDS.get("code_tests")(prompts=["p", "p"], completions=["x = 1", "x = 1"], tests=[["assert x"], [1, 2]])


def test_parse_tests_and_extract_code():
    assert parse_tests(["assert a", "assert b"]) == ("asserts", ["assert a", "assert b"])
    assert parse_tests("assert a\n\nassert b\n") == ("asserts", ["assert a", "assert b"])
    assert parse_tests([{"input": 1, "output": 2}]) == ("io", [("1", "2")])
    with pytest.raises(ValueError, match="not a mix"):
        parse_tests(["assert a", {"input": "1", "output": "2"}])
    assert extract_code("text\n```py\nx = 1\n```\nmore ```python\ny\n```") == "x = 1\n"
    assert extract_code("```python\nunterminated = 1\n") == "unterminated = 1\n"
    assert extract_code("x = 2</s>") == "x = 2"


def test_a_missing_sandbox_stops_the_reward_by_name(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    monkeypatch.delenv("ORCHARD_SANDBOX", raising=False)
    with pytest.raises(SandboxUnavailable, match=r"reward 'python_expression': .*apt-get install -y bubblewrap"):
        REWARDS.get("python_expression")(prompts=["p"], completions=["1+1"], answer=["2"], workers=3)
    with pytest.raises(ValueError, match=r"reward 'code_tests': sandbox isolation must be one of bwrap, rlimits_only"):
        REWARDS.get("code_tests")(prompts=["p"], completions=["x"], tests=[["assert x"]], isolation="docker")
