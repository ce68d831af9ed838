"""Run a weighted set of reward functions over a batch, with every failure made loud.

A function is called as TRL calls it, by keyword: `fn(prompts=..., completions=..., **columns)`.

Checked when a `RewardSpec` is built (pydantic ValidationError; a job config names the key, e.g. `reward.0.weight`):
the weight is finite. Checked when the set is built (ConfigError): the reference loads; the function takes
prompts/completions by keyword; every config kwarg names one of its parameters.
Checked on every call, whatever `on_error` says (RewardError): the batch has the dataset columns the function
requires and no column clashes with a config kwarg; the function returns within `timeout_s`; it returns a
list/tuple (or 1-D array/tensor) with one element per completion, each a real number or None.
Per-sample failures, an exception or a NaN/inf value:
- `on_error="raise"`: RewardError naming the function and the sample. To name the sample of an exception the
  function is re-called one sample at a time (the job is stopping anyway).
- `on_error="drop"`: the function is re-called one sample at a time and only the samples it fails on are
  dropped (`valid=False`), counted in `reward/dropped` and `reward/<name>/dropped`, and logged as a warning.
  Not dropped but raised: a function that fails on every sample of a batch of two or more (it is broken, e.g. a
  bad regex, not unlucky), and one that fails on the batch but on no single sample.
Timeouts always raise: a hung Python thread cannot be killed, so the job stops with an error naming the function
(the thread is a daemon and does not keep the process alive).
Execution: async functions run concurrently on one event loop in a daemon thread (each bounded by `timeout_s`
and cancelled past it) while the sync functions run one after another, each in its own daemon thread.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import numbers
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from pydantic import Field

from rl.config import Section
from rl.errors import ConfigError, RewardError
from rewards.loader import bind_kwargs, check_signature, load_reward_fn, required_columns

log = logging.getLogger(__name__)

_GRACE_S = 0.25  # extra wait for the event-loop thread beyond timeout_s (its tasks are cancelled at timeout_s)


class RewardSpec(Section):
    """One reward function of a set; also the config section of each entry of a job's `reward` list."""

    fn: str
    """A registered reward name, `path/to/file.py:fn`, or `package.module:fn`."""
    weight: float = Field(1.0, allow_inf_nan=False)
    """Weight of this function in the summed reward (a finite number)."""
    kwargs: dict = {}
    """Keyword arguments bound to the function (e.g. `pattern` for the `format` reward)."""


@dataclass
class RewardOutput:
    """Scores of one batch of B completions."""
    rewards: torch.Tensor  # [B] float32: sum of weight * value over the functions that returned a number for the
    #                        sample (None counts 0; 0 if none applies); NaN where valid is False
    valid: torch.Tensor  # [B] bool: False where a function failed on the sample (on_error="drop")
    per_fn: dict[str, torch.Tensor]  # name -> [B] float32 raw values, NaN for None and for failed samples
    metrics: dict[str, float]  # reward/<name>/{mean,dropped,time_s}, reward/none_frac/<name>,
    #                            reward/{dropped,all_none,all_none_frac,time_s}, and reward/<name>/<key> for each
    #                            key of a `.metrics` dict on the list a function returned (rewards.code.ScoredList)


@dataclass
class _Fn:
    name: str
    fn: Callable  # config kwargs already bound
    weight: float
    is_async: bool
    bound: tuple[str, ...]  # names of the config kwargs
    required: tuple[str, ...]  # parameters that must come from dataset columns


@dataclass
class _Result:
    """What one call produced: a value, an exception, or nothing within the timeout."""
    value: Any = None
    error: BaseException | None = None
    timed_out: bool = False
    seconds: float = 0.0


@dataclass
class _Scores:
    """One function's checked values on a batch; `failed[i]` marks samples it raised on or gave NaN/inf for."""
    values: list[float | None]
    failed: list[bool]
    seconds: float
    first_failure: str = ""  # message for the first failed sample, for the drop-mode warning
    extra: dict = field(default_factory=dict)  # the returned list's own `.metrics` (e.g. sandbox outcome counts)


class RewardSet:
    """The weighted sum of several reward functions, checked as the module docstring says."""

    def __init__(self, specs: list[RewardSpec], timeout_s: float = 30.0, on_error: str = "raise"):
        if on_error not in ("raise", "drop"):
            raise ConfigError(f"on_reward_error must be 'raise' or 'drop', got {on_error!r}")
        if not timeout_s > 0:
            raise ConfigError(f"reward_timeout_s must be > 0, got {timeout_s}")
        if not specs:
            raise ConfigError("no reward functions configured")
        self.timeout_s, self.on_error = float(timeout_s), on_error
        self.fns: list[_Fn] = []
        for spec in specs:
            self.fns.append(_make_fn(spec, {f.name for f in self.fns}))

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fns]

    def check_columns(self, columns) -> None:
        """The check every call makes, ahead of any batch: each function's required columns are among `columns`
        and none clashes with a config kwarg (RewardError otherwise)."""
        for f in self.fns:
            _check_columns(f, dict.fromkeys(columns))

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> RewardOutput:
        """Score a batch: `columns` maps each dataset column to one value per completion."""
        _check_batch(prompts, completions, columns)
        for f in self.fns:
            _check_columns(f, columns)
        t0 = time.perf_counter()
        async_fns = [f for f in self.fns if f.is_async]
        join_async = _start_async([_call(f.fn, prompts, completions, columns) for f in async_fns], self.timeout_s,
                                  "reward-async")
        results = {f.name: _run_sync(_call(f.fn, prompts, completions, columns), self.timeout_s, f"reward-{f.name}")
                   for f in self.fns if not f.is_async}
        results.update(zip([f.name for f in async_fns], join_async()))
        scores = {f.name: self._scores(f, results[f.name], prompts, completions, columns) for f in self.fns}
        out = _combine(self.fns, scores)
        out.metrics["reward/time_s"] = time.perf_counter() - t0
        return out

    def _scores(self, f: _Fn, result: _Result, prompts, completions, columns) -> _Scores:
        """Check one function's batch result; on an exception, re-call per sample to find the failing ones."""
        B = len(completions)
        if result.timed_out:
            raise RewardError(_timeout_message(f.name, self.timeout_s, B))
        if result.error is None:
            values = _check_output(f.name, result.value, prompts, completions)
            failed = [not _finite(v) for v in values]
            first = _nonfinite_message(f.name, values, failed, prompts, completions)
            if first and self.on_error == "raise":
                raise RewardError(first)
            scores = _Scores([None if bad else v for v, bad in zip(values, failed)], failed, result.seconds, first,
                             dict(getattr(result.value, "metrics", None) or {}))
        else:
            per_sample = self._isolate(f, prompts, completions, columns, stop_at_first=self.on_error == "raise")
            scores = self._per_sample_scores(f, result, per_sample, prompts, completions)
        _check_not_all_failed(f.name, scores.failed)
        if any(scores.failed):
            log.warning("%d of %d samples dropped (on_reward_error=drop); the first: %s", sum(scores.failed), B,
                        scores.first_failure)
        return scores

    def _isolate(self, f: _Fn, prompts, completions, columns, stop_at_first: bool) -> list[_Result]:
        """Call `f` on one sample at a time (async: all concurrently). Stops at the first failure if asked."""
        calls = [_call(f.fn, [prompts[i]], [completions[i]], {k: [v[i]] for k, v in columns.items()})
                 for i in range(len(completions))]
        if f.is_async:
            return _start_async(calls, self.timeout_s, f"reward-{f.name}")()
        results = []
        for call in calls:
            results.append(_run_sync(call, self.timeout_s, f"reward-{f.name}"))
            if stop_at_first and (results[-1].error is not None or results[-1].timed_out):
                break
        return results

    def _per_sample_scores(self, f: _Fn, batch: _Result, per_sample: list[_Result], prompts, completions) -> _Scores:
        """Scores from one-sample calls made after the batch call raised `batch.error`."""
        B = len(completions)
        values: list[float | None] = [None] * B
        failed = [False] * B
        first = ""
        for i, r in enumerate(per_sample):
            if r.timed_out:
                raise RewardError(_timeout_message(f.name, self.timeout_s, 1))
            if r.error is not None:
                if self.on_error == "raise":
                    raise RewardError(_raised_message(f.name, r.error, i, prompts, completions)) from r.error
                failed[i] = True
                first = first or _raised_message(f.name, r.error, i, prompts, completions)
                continue
            v = _check_output(f.name, r.value, [prompts[i]], [completions[i]], first_index=i)[0]
            failed[i] = not _finite(v)
            values[i] = None if failed[i] else v
            if failed[i] and self.on_error == "raise":
                raise RewardError(_nonfinite_at(f.name, v, i, prompts, completions))
            if failed[i] and not first:
                first = _nonfinite_at(f.name, v, i, prompts, completions)
        if not any(failed):
            e = batch.error
            raise RewardError(f"reward '{f.name}' raised {type(e).__name__}: {_clip(str(e), 200)} on the batch of "
                              f"{B} completions but on no single one of them; a reward must score samples "
                              f"independently") from e
        return _Scores(values, failed, batch.seconds, first)



# --- construction ---------------------------------------------------------------------------------------------
def _make_fn(spec: RewardSpec, taken: set[str]) -> _Fn:
    """Load, check and bind one spec; its name is made unique among `taken` (exact_match, exact_match_2...)."""
    name, fn = load_reward_fn(spec.fn)
    name = _unique(name, taken)
    check_signature(name, fn)
    kwargs = dict(spec.kwargs)
    bound = bind_kwargs(name, fn, kwargs)
    return _Fn(name=name, fn=bound, weight=float(spec.weight), is_async=_is_async(fn), bound=tuple(kwargs),
               required=tuple(required_columns(bound)))


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    k = 2
    while f"{name}_{k}" in taken:
        k += 1
    return f"{name}_{k}"


def _is_async(fn: Callable) -> bool:
    """`async def` functions (partials of them too) and objects with an `async def __call__`."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


# --- input checks ---------------------------------------------------------------------------------------------
def _check_batch(prompts: list[str], completions: list[str], columns: dict[str, list]) -> None:
    """The caller's side of the contract: one prompt and one value of every column per completion."""
    B = len(completions)
    if len(prompts) != B:
        raise ValueError(f"{len(prompts)} prompts for {B} completions")
    for k, v in columns.items():
        if k in ("prompts", "completions"):
            raise ValueError(f"dataset column '{k}' would clash with the reward functions' own argument")
        if len(v) != B:
            raise ValueError(f"dataset column '{k}' has {len(v)} values for {B} completions")


def _check_columns(f: _Fn, columns: dict) -> None:
    """The function's required parameters are present as columns, and no column shadows a config kwarg."""
    missing = [c for c in f.required if c not in columns]
    if missing:
        raise RewardError(f"reward '{f.name}' needs {', '.join(repr(c) for c in missing)}: bind it in the config's "
                          f"kwargs or provide a dataset column; the batch's columns: {', '.join(columns) or '(none)'}")
    clash = [k for k in f.bound if k in columns]
    if clash:
        raise RewardError(f"reward '{f.name}': config kwarg '{clash[0]}' has the same name as a dataset column; "
                          f"rename one of them")


# --- calling ----------------------------------------------------------------------------------------------------
def _call(fn: Callable, prompts: list[str], completions: list[str], columns: dict) -> Callable[[], Any]:
    """A zero-argument call of `fn` with TRL's keyword arguments."""
    return functools.partial(fn, prompts=prompts, completions=completions, **columns)


def _run_sync(call: Callable[[], Any], timeout_s: float, thread_name: str) -> _Result:
    """Run `call` in a fresh daemon thread (an awaitable result is awaited there); wait at most `timeout_s`."""
    box: list[_Result] = []

    def work():
        t = time.perf_counter()
        try:
            value = call()
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
            box.append(_Result(value=value, seconds=time.perf_counter() - t))
        except BaseException as e:  # handed to the caller's thread, which reports it
            box.append(_Result(error=e, seconds=time.perf_counter() - t))

    th = threading.Thread(target=work, name=thread_name, daemon=True)
    th.start()
    th.join(timeout_s)
    return box[0] if box else _Result(timed_out=True, seconds=timeout_s)


async def _await(awaitable):
    return await awaitable


def _start_async(calls: list[Callable[[], Any]], timeout_s: float, thread_name: str) -> Callable[[], list[_Result]]:
    """Start `calls` concurrently on one event loop in a daemon thread; returns `join() -> results` (in order).
    A task still running at `timeout_s` is cancelled and reported as timed out; if the loop itself is blocked
    (a blocking call inside `async def`), every call not yet reported is timed out."""
    if not calls:
        return lambda: []
    results = [_Result(timed_out=True, seconds=timeout_s) for _ in calls]

    async def main():
        tasks = [asyncio.ensure_future(_timed(call)) for call in calls]
        done, _ = await asyncio.wait(tasks, timeout=timeout_s)
        for i, task in enumerate(tasks):
            if task in done:
                results[i] = task.result()
            else:
                task.cancel()

    deadline = time.monotonic() + timeout_s + _GRACE_S
    th = threading.Thread(target=asyncio.run, args=(main(),), name=thread_name, daemon=True)
    th.start()

    def join() -> list[_Result]:
        th.join(max(0.0, deadline - time.monotonic()))
        return list(results)

    return join


async def _timed(call: Callable[[], Any]) -> _Result:
    t = time.perf_counter()
    try:
        value = call()
        if inspect.isawaitable(value):
            value = await value
        return _Result(value=value, seconds=time.perf_counter() - t)
    except asyncio.CancelledError:
        raise
    except BaseException as e:  # reported by the caller
        return _Result(error=e, seconds=time.perf_counter() - t)


# --- output checks --------------------------------------------------------------------------------------------
def _check_output(name: str, out, prompts: list[str], completions: list[str],
                  first_index: int = 0) -> list[float | None]:
    """`out` as floats/None. Raises RewardError unless it is a list/tuple (or 1-D array/tensor) with one element
    per completion, each a real number (bool, int, float, numpy/torch scalar) or None. Does not check finiteness."""
    B = len(completions)
    if isinstance(out, (list, tuple)):
        items = list(out)
    elif getattr(out, "ndim", None) == 1 and hasattr(out, "tolist"):
        items = out.tolist()
    else:
        raise RewardError(f"reward '{name}' returned a {type(out).__name__}; expected a list of {B} floats or None "
                          f"(one per completion)")
    if len(items) != B:
        raise RewardError(f"reward '{name}' returned {len(items)} values, expected {B} (one per completion)")
    for j, v in enumerate(items):
        if v is not None and not _is_real(v):
            raise RewardError(f"reward '{name}' returned a {type(v).__name__} ({_clip(repr(v), 40)}) at index "
                              f"{first_index + j}; expected a float or None "
                              f"(prompt={_clip(repr(prompts[j]))}, completion={_clip(repr(completions[j]))})")
    return [None if v is None else float(v) for v in items]


def _is_real(v) -> bool:
    if isinstance(v, numbers.Real):
        return True
    return getattr(v, "ndim", None) == 0 and hasattr(v, "item") and isinstance(v.item(), numbers.Real)


def _finite(v: float | None) -> bool:
    return v is None or math.isfinite(v)


def _check_not_all_failed(name: str, failed: list[bool]) -> None:
    """A function that fails on every sample of a batch of two or more is broken: raise even in drop mode."""
    if len(failed) > 1 and all(failed):
        raise RewardError(f"reward '{name}' failed on all {len(failed)} samples of the batch (exception or "
                          f"NaN/inf); on_reward_error=drop drops samples a function fails on, not a function "
                          f"that never works")


# --- combining ------------------------------------------------------------------------------------------------
def _combine(fns: list[_Fn], scores: dict[str, _Scores]) -> RewardOutput:
    """Weighted sum (None counts 0, as TRL's nansum), validity, per-function values and metrics."""
    B = len(next(iter(scores.values())).values)
    total = torch.zeros(B, dtype=torch.float32)  # [B]
    applicable = torch.zeros(B, dtype=torch.bool)  # [B] some function returned a number
    valid = torch.ones(B, dtype=torch.bool)  # [B]
    per_fn, metrics = {}, {}
    for f in fns:
        s = scores[f.name]
        raw = torch.tensor([math.nan if v is None else v for v in s.values], dtype=torch.float32)  # [B]
        failed = torch.tensor(s.failed, dtype=torch.bool)  # [B]
        present = ~torch.isnan(raw)  # [B]
        total += f.weight * torch.nan_to_num(raw, nan=0.0)  # [B]
        applicable |= present
        valid &= ~failed
        per_fn[f.name] = raw
        metrics[f"reward/{f.name}/mean"] = raw[present].mean().item() if present.any() else math.nan
        metrics[f"reward/{f.name}/dropped"] = float(failed.sum())
        metrics[f"reward/{f.name}/time_s"] = s.seconds
        metrics[f"reward/none_frac/{f.name}"] = (~present & ~failed).float().mean().item() if B else 0.0
        metrics.update({f"reward/{f.name}/{k}": float(v) for k, v in s.extra.items()})
    metrics["reward/dropped"] = float((~valid).sum())
    metrics["reward/all_none"] = float((valid & ~applicable).sum())
    metrics["reward/all_none_frac"] = (~applicable).float().mean().item() if B else 0.0  # no number from any fn
    rewards = torch.where(valid, total, torch.full_like(total, math.nan))  # [B]
    return RewardOutput(rewards=rewards, valid=valid, per_fn=per_fn, metrics=metrics)


# --- messages -------------------------------------------------------------------------------------------------
def _clip(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _sample(i: int, prompts: list[str], completions: list[str]) -> str:
    return f"sample {i} (prompt={_clip(repr(prompts[i]))}, completion={_clip(repr(completions[i]))})"


def _raised_message(name: str, e: BaseException, i: int, prompts, completions) -> str:
    return f"reward '{name}' raised {type(e).__name__}: {_clip(str(e), 200)} on {_sample(i, prompts, completions)}"


def _nonfinite_message(name: str, values: list, failed: list[bool], prompts, completions) -> str:
    """Message for the first failed (NaN/inf) value, or "" if none failed."""
    if not any(failed):
        return ""
    i = failed.index(True)
    return _nonfinite_at(name, values[i], i, prompts, completions)


def _nonfinite_at(name: str, value: float, i: int, prompts, completions) -> str:
    return f"reward '{name}' returned {value} for {_sample(i, prompts, completions)}"


def _timeout_message(name: str, timeout_s: float, n: int) -> str:
    return (f"reward '{name}' did not return within reward_timeout_s={timeout_s:g} s (on {n} completion(s)); a hung "
            f"Python thread cannot be stopped, so the job stops here")
