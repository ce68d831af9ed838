"""Built-in reward functions, registered by name. All follow TRL's signature:
`fn(prompts, completions, **dataset_columns) -> list[float | None]`. Parameterised ones take keyword
arguments bound from the config (`{fn: format, kwargs: {pattern: ...}}`).
"""
from __future__ import annotations

import re

from rl.registry import Registry

REWARDS: Registry = Registry("reward")

_NUMBER = re.compile(r"\s*([-+]?\d+(?:\.\d+)?)")


@REWARDS.register("exact_match")
def exact_match(prompts: list[str], completions: list[str], answer: list, **_) -> list[float]:
    """1.0 when the stripped completion equals the stripped reference answer, else 0.0."""
    return [1.0 if c.strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


@REWARDS.register("numeric_match")
def numeric_match(prompts: list[str], completions: list[str], answer: list, tol: float = 1e-6, **_) -> list[float]:
    """1.0 when the first number in the completion equals float(answer) within `tol`, else 0.0."""
    out = []
    for c, a in zip(completions, answer):
        m = _NUMBER.match(c)
        try:
            out.append(1.0 if m is not None and abs(float(m.group(1)) - float(a)) <= tol else 0.0)
        except ValueError:  # the reference itself is not a number: this reward does not apply
            out.append(None)
    return out


@REWARDS.register("math_verify")
def math_verify(prompts: list[str], completions: list[str], answer: list, **_) -> list[float]:
    """1.0 when math-verify judges the completion's answer equal to the reference (LaTeX, fractions, sets...)."""
    from math_verify import parse, verify

    return [1.0 if verify(parse(str(a)), parse(c)) else 0.0 for c, a in zip(completions, answer)]


@REWARDS.register("format")
def format_reward(prompts: list[str], completions: list[str], pattern: str = r"-?\d+", **_) -> list[float]:
    """1.0 when the whole stripped completion matches the regex `pattern`, else 0.0."""
    rx = re.compile(pattern, re.DOTALL)
    return [1.0 if rx.fullmatch(c.strip()) else 0.0 for c in completions]


@REWARDS.register("length_penalty")
def length_penalty(prompts: list[str], completions: list[str], target: int = 32, scale: float = 32.0, **_) -> list[float]:
    """-max(0, len(completion) - target) / scale: zero up to `target` characters, then linearly negative."""
    return [-max(0, len(c) - target) / scale for c in completions]
