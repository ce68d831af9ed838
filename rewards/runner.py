"""Run reward functions over a batch with every failure made loud.

Checked: the function returns a list/tuple of the batch's length whose elements are numbers or None; no NaN/inf;
it finishes within `timeout_s`. With `on_error="raise"` any failure stops the job with a `RewardError` naming
the function and the sample. With `on_error="drop"`, samples a function fails on (an exception, NaN/inf) are
marked invalid and counted in `reward/dropped`: to find which samples raise, the function is re-called one
sample at a time. A wrong length or type is a programming error and always raises. A hung function cannot be
killed in Python: its thread is abandoned (daemon) and the job stops with the timeout error.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import math
import threading
import time
from dataclasses import dataclass, field

import torch

from rl.errors import RewardError
from rewards.loader import load_reward_fn


@dataclass
class RewardSpec:
    fn: str
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # [B] weighted sum over applicable functions (0 where none applies)
    valid: torch.Tensor  # [B] bool: False where a function failed and on_error="drop"
    per_fn: dict[str, torch.Tensor]  # name -> [B] raw values, nan for None / failed
    metrics: dict[str, float]


def _short(s: str, n: int = 80) -> str:
    s = repr(s)
    return s if len(s) <= n else s[: n - 3] + "..."


def _call_with_timeout(fn, timeout_s: float, name: str, args, kwargs):
    """Run fn (sync or async) in a daemon thread; raise RewardError if it takes longer than timeout_s."""
    box: dict = {}

    def target():
        try:
            res = fn(*args, **kwargs)
            if inspect.isawaitable(res):
                res = asyncio.run(_as_coroutine(res))
            box["value"] = res
        except BaseException as e:  # re-raised in the caller's thread below
            box["error"] = e

    th = threading.Thread(target=target, name=f"reward-{name}", daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        raise RewardError(f"reward '{name}' did not return within reward_timeout_s={timeout_s:g} s "
                          f"(batch of {len(args[1])} completions)")
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _as_coroutine(awaitable):
    return await awaitable


class RewardSet:
    """The weighted sum of several reward functions, checked (see module docstring)."""

    def __init__(self, specs: list[RewardSpec], timeout_s: float = 30.0, on_error: str = "raise"):
        if on_error not in ("raise", "drop"):
            raise ValueError(f"on_error must be 'raise' or 'drop', got {on_error!r}")
        if not specs:
            raise RewardError("no reward functions configured")
        self.timeout_s, self.on_error = timeout_s, on_error
        self.fns: list[tuple[str, object, float]] = []
        names = set()
        for spec in specs:
            name, fn = load_reward_fn(spec.fn)
            if name in names:
                name = f"{name}_{len(names)}"
            names.add(name)
            self.fns.append((name, functools.partial(fn, **spec.kwargs) if spec.kwargs else fn, spec.weight))

    def _check(self, name: str, out, prompts, completions) -> list[float | None]:
        B = len(completions)
        if not isinstance(out, (list, tuple)):
            raise RewardError(f"reward '{name}' returned {type(out).__name__}; expected a list of {B} floats (or None)")
        if len(out) != B:
            raise RewardError(f"reward '{name}' returned {len(out)} values for {B} completions")
        for i, v in enumerate(out):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) and not (
                    hasattr(v, "item") and getattr(v, "ndim", 1) == 0):
                raise RewardError(f"reward '{name}' returned a {type(v).__name__} ({_short(str(v), 40)}) for sample {i}; "
                                  f"expected float or None (prompt={_short(prompts[i])}, completion={_short(completions[i])})")
        return [None if v is None else float(v) for v in out]

    def _run_one(self, name, fn, prompts, completions, columns) -> tuple[list[float | None], list[bool]]:
        B = len(completions)
        ok = [True] * B
        try:
            out = _call_with_timeout(fn, self.timeout_s, name, (prompts, completions), columns)
        except RewardError:
            raise
        except Exception as e:
            if self.on_error == "raise":
                idx = self._find_failing(name, fn, prompts, completions, columns)
                where = (f"on sample {idx} (prompt={_short(prompts[idx])}, completion={_short(completions[idx])})"
                         if idx is not None else f"on a batch of {B} completions")
                raise RewardError(f"reward '{name}' raised {type(e).__name__}: {e} {where}") from e
            values: list[float | None] = []
            for i in range(B):  # isolate the failing samples
                try:
                    one = _call_with_timeout(fn, self.timeout_s, name, ([prompts[i]], [completions[i]]),
                                             {k: [v[i]] for k, v in columns.items()})
                    values.append(self._check(name, one, [prompts[i]], [completions[i]])[0])
                except RewardError:
                    raise
                except Exception:
                    values.append(None)
                    ok[i] = False
            return values, ok
        values = self._check(name, out, prompts, completions)
        for i, v in enumerate(values):
            if v is not None and not math.isfinite(v):
                if self.on_error == "raise":
                    raise RewardError(f"reward '{name}' returned {v} for sample {i} "
                                      f"(prompt={_short(prompts[i])}, completion={_short(completions[i])})")
                values[i], ok[i] = None, False
        return values, ok

    def _find_failing(self, name, fn, prompts, completions, columns) -> int | None:
        for i in range(len(completions)):
            try:
                _call_with_timeout(fn, self.timeout_s, name, ([prompts[i]], [completions[i]]),
                                   {k: [v[i]] for k, v in columns.items()})
            except RewardError:
                raise
            except Exception:
                return i
        return None

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> RewardOutput:
        B = len(completions)
        t0 = time.time()
        total = torch.zeros(B)  # [B]
        applicable = torch.zeros(B, dtype=torch.bool)  # [B]
        valid = torch.ones(B, dtype=torch.bool)  # [B]
        per_fn, metrics = {}, {}
        for name, fn, weight in self.fns:
            values, ok = self._run_one(name, fn, prompts, completions, columns)
            raw = torch.tensor([float("nan") if v is None else v for v in values], dtype=torch.float32)  # [B]
            present = ~torch.isnan(raw)
            total += weight * torch.nan_to_num(raw, nan=0.0)
            applicable |= present
            valid &= torch.tensor(ok)
            per_fn[name] = raw
            metrics[f"reward/{name}/mean"] = raw[present].mean().item() if present.any() else float("nan")
            metrics[f"reward/none_frac/{name}"] = 1.0 - present.float().mean().item()
        metrics["reward/dropped"] = float((~valid).sum())
        metrics["reward/all_none"] = float((~applicable & valid).sum())
        metrics["reward/time_s"] = time.time() - t0
        return RewardOutput(rewards=total, valid=valid, per_fn=per_fn, metrics=metrics)
