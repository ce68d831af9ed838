"""Built-in reward functions, registered by name in `REWARDS`.

All follow TRL's signature, `fn(prompts, completions, **dataset_columns) -> list[float | None]`; `None` means
"not applicable to this sample". A completion is a string, or (for conversational prompts, as TRL passes them) a
list of messages whose last one's `content` is the text scored (`completion_text`). The reference answer is the dataset column `answer`. Parameterised rewards
take keyword arguments that the config binds with functools.partial (`{fn: format, kwargs: {pattern: ...}}`);
the runner checks that every bound name is a parameter of the function, so a typo fails at load.
"""
from __future__ import annotations

import math
import re
import threading
from typing import Sequence

from rl.registry import Registry

REWARDS: Registry = Registry("reward")

EOS_TEXTS = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "<eos>")
"""End-of-sequence texts stripped from the end of a completion by `exact_match` (decoders that keep special
tokens leave them in the text)."""

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")  # integer or decimal with optional sign; no exponent


def strip_eos(text: str, eos_texts: Sequence[str] = EOS_TEXTS) -> str:
    """`text` without surrounding whitespace and without any trailing EOS texts (repeated ones too)."""
    text = text.strip()
    while True:
        end = next((e for e in eos_texts if e and text.endswith(e)), None)
        if end is None:
            return text
        text = text[: -len(end)].rstrip()


def completion_text(completion) -> str:
    """The text of a completion as TRL passes it: the string itself, or the last message's `content` of a
    conversational completion (`[{"role": "assistant", "content": ...}]`)."""
    if isinstance(completion, list):
        return str(completion[-1]["content"]) if completion else ""
    return completion


def texts(completions: list) -> list[str]:
    return [completion_text(c) for c in completions]


def first_number(text: str) -> float | None:
    """The first integer or decimal in `text` (sign allowed: `-3.5`, `+2`, `.5`), or None if there is none."""
    m = _NUMBER.search(text)
    return float(m.group(0)) if m else None


def _as_float(value) -> float | None:
    """float(value) if it is a finite number (or a string of one), else None."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


@REWARDS.register("exact_match")
def exact_match(prompts: list[str], completions: list[str], answer: list, eos_texts: Sequence[str] = EOS_TEXTS,
                **columns) -> list[float]:
    """1.0 when the completion, stripped of whitespace and trailing EOS texts, equals str(answer) stripped of
    whitespace; else 0.0. Case- and format-sensitive on purpose (use numeric_match/math_verify for numbers)."""
    return [1.0 if strip_eos(c, eos_texts) == str(a).strip() else 0.0 for c, a in zip(texts(completions), answer)]


@REWARDS.register("numeric_match")
def numeric_match(prompts: list[str], completions: list[str], answer: list, tol: float = 1e-6,
                  **columns) -> list[float | None]:
    """1.0 when the first number in the completion is within `tol` of float(answer); 0.0 when it is not or the
    completion has no number; None (not applicable) when the reference itself is not a finite number."""
    out: list[float | None] = []
    for c, a in zip(texts(completions), answer):
        ref, got = _as_float(a), first_number(c)
        out.append(None if ref is None else 1.0 if got is not None and abs(got - ref) <= tol else 0.0)
    return out


def _signal_timeout() -> int | None:
    """math-verify's own timeout uses signal.alarm, which only works on the main thread. The runner calls
    rewards in worker threads and enforces its own timeout, so there we disable math-verify's (None)."""
    return 5 if threading.current_thread() is threading.main_thread() else None


@REWARDS.register("math_verify")
def math_verify(prompts: list[str], completions: list[str], answer: list, **columns) -> list[float | None]:
    """1.0 when math-verify judges the completion's final answer equal to the reference (LaTeX, \\boxed{},
    fractions vs decimals, sets...), else 0.0; None (not applicable) when the reference does not parse (as TRL's
    accuracy reward does). Numbers parse bare; write other references in `$...$` or `\\boxed{}` (`$x^2+1$`)."""
    from math_verify import parse, verify

    timeout = _signal_timeout()
    out: list[float | None] = []
    for c, a in zip(texts(completions), answer):
        gold = parse(str(a), parsing_timeout=timeout)
        if not gold:
            out.append(None)
            continue
        out.append(1.0 if verify(gold, parse(c, parsing_timeout=timeout), timeout_seconds=timeout) else 0.0)
    return out


@REWARDS.register("format")
def format_reward(prompts: list[str], completions: list[str], pattern: str, **columns) -> list[float]:
    """1.0 when the whole completion (surrounding whitespace stripped) matches the regex `pattern` (re.DOTALL:
    `.` crosses newlines), else 0.0. `pattern` has no default: bind it in the config's `kwargs`."""
    rx = re.compile(pattern, re.DOTALL)
    return [1.0 if rx.fullmatch(c.strip()) else 0.0 for c in texts(completions)]


@REWARDS.register("length_penalty")
def length_penalty(prompts: list[str], completions: list[str], target: int = 256, scale: float = 256.0,
                   **columns) -> list[float]:
    """-max(0, len(completion) - target) / scale, lengths in characters: 0 up to `target`, then linearly more
    negative (-1 at `target + scale`). Raises ValueError if scale <= 0."""
    if scale <= 0:
        raise ValueError(f"length_penalty: scale must be > 0, got {scale}")
    return [-max(0, len(c) - target) / scale for c in texts(completions)]
