"""Loading rewards by registered name, file path and module, and every way a reference can be wrong."""
import sys
from pathlib import Path

import pytest

from rewards import REWARDS, load_reward_fn
from rewards.loader import bind_kwargs, check_signature, required_columns
from rl.errors import ConfigError

FIX = Path(__file__).parent / "fixtures"


def test_registered_name():
    assert load_reward_fn("exact_match") == ("exact_match", REWARDS.get("exact_match"))


def test_file_ref_absolute_and_relative_to_cwd_load_one_module(monkeypatch):
    name, fn = load_reward_fn(f"{FIX / 'user_rewards.py'}:contains_seven")
    assert name == "contains_seven" and fn(completions=["17", "1"]) == [1.0, 0.0]
    monkeypatch.chdir(FIX)
    assert load_reward_fn("user_rewards.py:contains_seven")[1] is fn  # same file -> the same module, not re-run
    assert load_reward_fn("./user_rewards.py:contains_seven")[1] is fn


def test_file_ref_does_not_pollute_sys_modules():
    """Two files with the same name load side by side under unique module names; none under the bare stem."""
    _, a = load_reward_fn(f"{FIX / 'same_a' / 'same_name.py'}:score")
    _, b = load_reward_fn(f"{FIX / 'same_b' / 'same_name.py'}:score")
    assert a(completions=["x"]) == [1.0] and b(completions=["x"]) == [2.0]
    assert "same_name" not in sys.modules and "user_rewards" not in sys.modules
    assert a.__module__.startswith("_orchard_reward_") and a.__module__ != b.__module__


def test_file_ref_imports_siblings_relatively_and_script_style():
    _, fn = load_reward_fn(f"{FIX / 'siblings' / 'uses_siblings.py'}:score")
    assert fn(completions=["a", "b"]) == [2.5, 2.5]  # BASE 2.0 (import x) + BONUS 0.5 (from .x import)
    assert str(FIX / "siblings") in sys.path[1:]  # appended: it never shadows what comes before it


def test_module_ref():
    name, fn = load_reward_fn("tests.rewards.fixtures.mod:answer_length")
    assert name == "answer_length" and fn(prompts=[], completions=["", ""], answer=["abc", 7]) == [3.0, 1.0]


@pytest.mark.parametrize("ref, message", [
    ("exact_mach", r"reward 'exact_mach' is not a registered reward \(did you mean 'exact_match'\?\)"),
    ("rewards.py", r"reward 'rewards.py' names a file but no function: write 'rewards.py:function_name'"),
    ("missing.py:fn", r"reward 'missing.py:fn': file not found: .*missing.py"),
    ("nodir/missing.py:fn", r"file not found: .*nodir/missing.py \(directory .*nodir does not exist either\)"),
    (f"{FIX / 'user_rewards.py'}:contains_sevn",
     r"user_rewards.py has no attribute 'contains_sevn' \(did you mean 'contains_seven'\?\); functions defined there"),
    (f"{FIX / 'user_rewards.py'}:NOT_CALLABLE", r"'NOT_CALLABLE' in file .*user_rewards.py is a int, not a function"),
    (f"{FIX / 'user_rewards.py'}:", r"expected a registered reward name, 'path/to/file.py:function'"),
    (f"{FIX / 'broken_import.py'}:fn", r"importing .*broken_import.py failed: RuntimeError: boom at import"),
    ("no_such_pkg_xyz.mod:fn", r"reward 'no_such_pkg_xyz.mod:fn': no module named 'no_such_pkg_xyz'"),
    ("tests.rewards.fixtures.nope:fn", r"no module named 'tests.rewards.fixtures.nope'"),
    ("tests.rewards.fixtures.mod:answer_len",
     r"module 'tests.rewards.fixtures.mod' has no attribute 'answer_len' \(did you mean 'answer_length'\?\)"),
])
def test_bad_refs_raise_config_error_naming_the_ref(ref, message):
    with pytest.raises(ConfigError, match=message):
        load_reward_fn(ref)


def test_failed_file_import_leaves_no_module_behind():
    with pytest.raises(ConfigError):
        load_reward_fn(f"{FIX / 'broken_import.py'}:fn")
    assert not [m for m in sys.modules if m.endswith(".broken_import")]


def test_bind_kwargs_checks_names():
    fmt = REWARDS.get("format")
    bound = bind_kwargs("format", fmt, {"pattern": "a+"})
    assert bound(prompts=[], completions=["aa", "b"]) == [1.0, 0.0]
    assert bind_kwargs("format", fmt, {}) is fmt
    with pytest.raises(ConfigError, match=r"reward 'format': unknown kwarg 'patern' \(did you mean 'pattern'\?\)"):
        bind_kwargs("format", fmt, {"patern": "a+"})
    with pytest.raises(ConfigError, match="unknown kwarg 'completions'"):
        bind_kwargs("format", fmt, {"completions": ["x"]})


def test_required_columns():
    assert required_columns(REWARDS.get("exact_match")) == ["answer"]
    assert required_columns(REWARDS.get("format")) == ["pattern"]
    assert required_columns(bind_kwargs("format", REWARDS.get("format"), {"pattern": "x"})) == []
    assert required_columns(REWARDS.get("length_penalty")) == []


def test_check_signature_requires_trl_keywords():
    check_signature("ok", load_reward_fn(f"{FIX / 'user_rewards.py'}:contains_seven")[1])  # **kwargs takes prompts
    with pytest.raises(ConfigError, match=r"reward 'po' cannot take prompts and completions as keyword argument"):
        check_signature("po", load_reward_fn(f"{FIX / 'user_rewards.py'}:positional_only")[1])


def test_shipped_example_loads_and_scores():
    example = Path(__file__).parents[2] / "rewards" / "examples" / "my_rewards.py"
    name, fn = load_reward_fn(f"{example}:close_enough")
    got = fn(prompts=["p"] * 5, completions=["12", " 13", "10", "twelve", "1"], answer=["12", "12", "12", "12", "n/a"])
    assert name == "close_enough" and got == [1.0, 0.5, 0.0, 0.0, None]


def test_shipped_trace_reward_checks_only_the_final_sum():
    example = Path(__file__).parents[2] / "rewards" / "examples" / "my_rewards.py"
    _, fn = load_reward_fn(f"{example}:final_sum")
    traces = ["7+5=12,c1,3+4+1=8,82", "7+5=12,c0,3+4=7,82", "7+5=12,c1,3+4+1=8,72", "7+5=12,c1,"]
    assert fn(prompts=["37+45="] * 4, completions=traces, a=[37] * 4, b=[45] * 4) == [1.0, 1.0, 0.0, 0.0]
