"""Built-in rewards against hand-written cases, called directly and through RewardSet (worker thread)."""
import math

import pytest

from rewards import REWARDS, RewardSet, RewardSpec
from rewards.builtin import first_number, strip_eos
from tests.rewards import test_code  # the sandboxed rewards are tested there

# (registered name, completions, answers, kwargs bound from the config, expected values)
CASES = [
    # stripped completion == stripped str(answer); trailing EOS texts are stripped; case-sensitive
    ("exact_match", [" 82", "83", "82\n", "82</s>", "82 <|im_end|><|endoftext|>", "Paris"],
     ["82", "82", "82", "82", 82, "paris"], {}, [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]),
    ("exact_match", ["yes<END>", "yes</s>"], ["yes", "yes"], {"eos_texts": ["<END>"]}, [1.0, 0.0]),
    # first number anywhere (sign, decimals) vs float(answer) within 1e-6; no number -> 0;
    # reference not a number -> None
    ("numeric_match", ["-3.50 apples", "  +12", "The answer is 7.", "x", "7", ".5", "1", "0.100002"],
     ["-3.5", "12", 7, "1", "8", "0.5", "n/a", "0.1"], {}, [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, None, 0.0]),
    ("numeric_match", ["0.100002"], ["0.1"], {"tol": 1e-3}, [1.0]),
    # math-verify: 1/2 == 0.5, \boxed{}, sets, expressions; a reference that does not parse -> None
    ("math_verify", ["$\\frac{1}{2}$", "0.5", "The answer is \\boxed{\\frac{1}{2}}", "3", "half", "$\\{2, 1\\}$",
                     "$1 + x^2$", "4"],
     ["0.5", "\\frac{1}{2}", "0.5", "4", "0.5", "$\\{1,2\\}$", "$x^2+1$", "n/a"], {},
     [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, None]),
    # whole (stripped) completion must match; DOTALL
    ("format", ["12", "1 2", " -4 ", "<think>a\nb</think>42"], [None] * 4, {"pattern": r"-?\d+"}, [1.0, 0.0, 1.0, 0.0]),
    ("format", ["<think>a\nb</think>42", "42"], [None] * 2, {"pattern": r"<think>.*</think>\d+"}, [1.0, 0.0]),
    # -(max(0, len - target)) / scale: len 40, target 32, scale 16 -> -(8)/16 = -0.5; len 3 -> 0; len 64 -> -2
    ("length_penalty", ["a" * 40, "abc", "a" * 64], [None] * 3, {"target": 32, "scale": 16}, [-0.5, 0.0, -2.0]),
    # defaults target=256, scale=256: len 384 -> -(128)/256 = -0.5
    ("length_penalty", ["a" * 384, "a" * 256], [None] * 2, {}, [-0.5, 0.0]),
]


def _ids(case):
    return f"{case[0]}-{len(case[1])}-{'-'.join(case[3])}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_builtin_direct(case):
    name, completions, answers, kwargs, expected = case
    got = REWARDS.get(name)(prompts=["p"] * len(completions), completions=completions, answer=answers, **kwargs)
    assert got == expected


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_builtin_through_reward_set(case):
    """Same values through the runner, which calls in a worker thread (math-verify's signal timeout must not fire)."""
    name, completions, answers, kwargs, expected = case
    out = RewardSet([RewardSpec(fn=name, kwargs=kwargs)])(["p"] * len(completions), completions, {"answer": answers})
    got = [None if math.isnan(v) else v for v in out.per_fn[name].tolist()]
    assert got == pytest.approx(expected)
    assert out.valid.all()


def test_every_registered_reward_is_tested():
    assert set(REWARDS.names()) == {case[0] for case in CASES} | test_code.COVERED


def test_strip_eos_and_first_number():
    assert strip_eos("  42 </s> ") == "42"
    assert strip_eos("42</s></s>") == "42"
    assert strip_eos("</s>42") == "</s>42"  # only trailing
    assert first_number("costs -0.25 dollars, not 3") == -0.25
    assert first_number("5-3") == 5.0
    assert first_number("none here") is None


def test_length_penalty_rejects_nonpositive_scale():
    with pytest.raises(ValueError, match="scale must be > 0, got 0"):
        REWARDS.get("length_penalty")(prompts=["p"], completions=["a"], scale=0)
