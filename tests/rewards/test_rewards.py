"""Rewards: built-ins by hand, user functions from a file and a module, and every failure mode (raise, drop)."""
import math
from pathlib import Path

import pytest

from rewards import REWARDS, RewardSet, RewardSpec, load_reward_fn
from rl.errors import ConfigError, RewardError

FIX = Path(__file__).parent / "fixtures" / "user_rewards.py"
MOD = "tests.rewards.fixtures.user_rewards"
TESTED = {"exact_match", "numeric_match", "math_verify", "format", "length_penalty"}


def call(name, completions, **cols):
    return REWARDS.get(name)(["p"] * len(completions), completions, **cols)


def test_builtins_by_hand():
    assert call("exact_match", [" 82", "83", "82\n"], answer=["82", "82", "82"]) == [1.0, 0.0, 1.0]
    assert call("numeric_match", ["-3.50 apples", "x", "7"], answer=["-3.5", "1", "8"]) == [1.0, 0.0, 0.0]
    assert call("numeric_match", ["1"], answer=["n/a"]) == [None]
    assert call("math_verify", ["$\\frac{1}{2}$", "0.5", "3"], answer=["0.5", "$\\frac{1}{2}$", "4"]) == [1.0, 1.0, 0.0]
    assert call("format", ["12", "1 2", "-4"], pattern=r"-?\d+") == [1.0, 0.0, 1.0]
    # length 40 with target 32, scale 16: -(40 - 32) / 16 = -0.5; short ones are 0
    assert call("length_penalty", ["a" * 40, "abc"], target=32, scale=16) == [-0.5, 0.0]


def test_every_builtin_is_tested():
    assert set(REWARDS.names()) <= TESTED


def rs(ref, on_error="raise", timeout=0.5, **kw):
    return RewardSet([RewardSpec(ref, kwargs=kw)], timeout_s=timeout, on_error=on_error)


def test_file_and_module_refs_and_weights():
    out = RewardSet([RewardSpec(f"{FIX}:contains_seven", 2.0), RewardSpec(f"{MOD}:async_len", 0.5)])(
        ["a", "b"], ["17", "x"], {"answer": ["1", "2"]})
    # sample 0: 2 * 1 + 0.5 * 2 = 3; sample 1: 2 * 0 + 0.5 * 1 = 0.5
    assert out.rewards.tolist() == [3.0, 0.5]
    assert out.metrics["reward/contains_seven/mean"] == 0.5 and out.valid.all()


def test_none_means_not_applicable():
    out = RewardSet([RewardSpec(f"{FIX}:only_answers"), RewardSpec("exact_match")])(
        ["p", "p"], ["5", "6"], {"answer": ["skip", "6"]})
    assert out.rewards.tolist() == [0.0, 2.0]
    assert out.metrics["reward/none_frac/only_answers"] == 0.5
    assert math.isnan(out.per_fn["only_answers"][0].item())


def test_load_errors_name_the_reference():
    with pytest.raises(ConfigError, match="exact_mach.*did you mean 'exact_match'"):
        load_reward_fn("exact_mach")
    with pytest.raises(ConfigError, match="file not found: .*missing.py"):
        load_reward_fn("missing.py:fn")
    with pytest.raises(ConfigError, match="has no attribute 'contains_sevn'.*did you mean 'contains_seven'"):
        load_reward_fn(f"{FIX}:contains_sevn")
    with pytest.raises(ConfigError, match="'NOT_CALLABLE' is a int, not a function"):
        load_reward_fn(f"{FIX}:NOT_CALLABLE")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg.mod'"):
        load_reward_fn("no_such_pkg.mod:fn")


def test_raise_names_function_and_sample():
    with pytest.raises(RewardError, match=r"reward 'raises_on_x' raised ValueError: cannot score x on sample 1 "
                                          r"\(prompt='q1', completion='x'\)"):
        rs(f"{FIX}:raises_on_x")(["q0", "q1"], ["ok", "x"], {})


def test_wrong_length_and_type_always_raise():
    for mode in ("raise", "drop"):
        with pytest.raises(RewardError, match="'wrong_length' returned 1 values for 2 completions"):
            rs(f"{FIX}:wrong_length", mode)(["a", "b"], ["1", "2"], {})
        with pytest.raises(RewardError, match="'wrong_type' returned a str .* for sample 0"):
            rs(f"{FIX}:wrong_type", mode)(["a"], ["1"], {})
        with pytest.raises(RewardError, match="'returns_dict' returned dict"):
            rs(f"{FIX}:returns_dict", mode)(["a"], ["1"], {})


def test_nan_raises_or_drops():
    with pytest.raises(RewardError, match="'nan_on_x' returned nan for sample 1"):
        rs(f"{FIX}:nan_on_x")(["a", "b"], ["1", "x"], {})
    out = rs(f"{FIX}:nan_on_x", "drop")(["a", "b"], ["1", "x"], {})
    assert out.valid.tolist() == [True, False] and out.metrics["reward/dropped"] == 1.0


def test_exception_in_drop_mode_drops_only_failing_samples():
    out = rs(f"{FIX}:raises_on_x", "drop")(["a", "b", "c"], ["1", "x", "2"], {})
    assert out.valid.tolist() == [True, False, True]
    assert out.rewards.tolist() == [1.0, 0.0, 1.0] and out.metrics["reward/dropped"] == 1.0


def test_timeout_names_function():
    with pytest.raises(RewardError, match=r"reward 'hangs' did not return within reward_timeout_s=0.2 s"):
        rs(f"{FIX}:hangs", timeout=0.2)(["a"], ["1"], {})


def test_kwargs_are_bound():
    out = rs("format", pattern=r"[a-z]+")(["p", "p"], ["abc", "12"], {})
    assert out.rewards.tolist() == [1.0, 0.0]
