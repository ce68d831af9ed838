"""Typed contracts between rollout engines, runners, workers, the controller and trainers.

Engine level: `generate(prompts, sampling) -> list[Sample]`, one `Sample` per prompt entry.

Runner level (`rollout/runners/`): a runner turns one `RolloutTask` into `task.group_size` trajectories per
prompt. A `Trajectory` is a list of `Step`s; each step records the context token ids it was generated from, the
generated token ids with their behaviour log-probs and policy versions, and a reward / done / info slot (filled by
an environment for multi-turn episodes; single-turn rewards come from the trainer's reward functions). A
single-turn sample is a one-step trajectory (`Trajectory.as_sample`).

Room for a denoising trajectory (masked-diffusion LMs, not built yet): its step type would record, per denoising
step, the positions revealed at that step and the tokens placed there (with their log-probs and versions) over a
fixed-length canvas, instead of a left-to-right continuation; it goes in `Trajectory.steps` beside `Step`, and the
controller, which never looks inside a trajectory, needs no change for it.

Worker level: every worker call returns a dataclass (`GenResult`, `CheckResult`, `ScoreResult`, `WorkerInfo`) or,
for the weight calls, the seconds it took.

Shapes: B = number of samples in a batch (prompts x generations), L = padded completion length.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 16
    temperature: float = 1.0
    """0 means greedy. Log-probs are always of the distribution actually sampled from (post-temperature);
    for greedy they are of the unscaled distribution (temperature 1)."""
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Sample:
    """One generated completion (what an engine returns per prompt entry)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    """Generated token ids, including the EOS token if one was produced."""
    logprobs: list[float]
    """Behaviour log-prob of each completion token under the engine's policy (post-temperature); len == len(completion_ids)."""
    versions: list[int]
    """Policy version that produced each completion token (weights may change mid-generation in async mode)."""
    finish_reason: str = "length"
    """'stop' (EOS produced) or 'length' (hit max_new_tokens)."""
    reveal_steps: list[int] | None = None
    """Masked-diffusion engines: the denoising step that revealed each completion position (None: left to right)."""


def samples_from_rows(prompts: list[list[int]], tokens: torch.Tensor, logprobs: torch.Tensor, version: int,
                      eos_ids: Collection[int], lengths: list[int] | None = None,
                      reveal_steps: torch.Tensor | None = None) -> list[Sample]:
    """One `Sample` per prompt from an engine's [B, N] outputs: row i's first `lengths[i]` tokens (None: the whole
    row) with their log-probs (and `reveal_steps`, for a masked-diffusion engine), every token made by policy
    `version`. 'stop' when the completion holds an EOS: a left-to-right engine's completion ends at its first one, a
    diffusion canvas keeps the tokens after it."""
    out = []
    for i, p in enumerate(prompts):
        n = tokens.shape[1] if lengths is None else lengths[i]
        completion = tokens[i, :n].tolist()
        out.append(Sample(prompt_ids=list(p), completion_ids=completion, logprobs=logprobs[i, :n].tolist(),
                          versions=[version] * n,
                          finish_reason="stop" if any(t in eos_ids for t in completion) else "length",
                          reveal_steps=None if reveal_steps is None else reveal_steps[i, :n].tolist()))
    return out


@dataclass
class Step:
    """One left-to-right generation step of a trajectory: `token_ids` continue `context_ids`."""

    context_ids: list[int]
    """The token ids the step was generated from (prompt, and for later turns earlier turns and observations)."""
    token_ids: list[int]
    """Generated token ids, including the EOS token if one was produced."""
    logprobs: list[float]
    """Behaviour log-prob of each generated token (post-temperature); len == len(token_ids)."""
    versions: list[int]
    """Policy version that produced each generated token; len == len(token_ids)."""
    finish_reason: str = "length"
    """'stop' (EOS produced) or 'length' (hit the token budget)."""
    reward: float | None = None
    """The environment's reward for this step (None: no per-step reward; rewards come from reward functions)."""
    done: bool = True
    """Whether the episode ended after this step."""
    info: dict = field(default_factory=dict)
    """The environment's info for this step (JSON-like values)."""
    reveal_steps: list[int] | None = None
    """Masked-diffusion engines: the denoising step that revealed each token (`Sample.reveal_steps`)."""

    @classmethod
    def from_sample(cls, s: Sample, **slots) -> "Step":
        """The step an engine's `Sample` is; `slots` fill reward / done / info."""
        return cls(context_ids=list(s.prompt_ids), token_ids=list(s.completion_ids), logprobs=list(s.logprobs),
                   versions=list(s.versions), finish_reason=s.finish_reason, reveal_steps=s.reveal_steps, **slots)


@dataclass
class Trajectory:
    """One episode: its steps in order (one step for a single-turn completion)."""

    steps: list[Step]

    def as_sample(self) -> Sample:
        """The single-turn view the GRPO batch is built from; an error for a trajectory of more than one step."""
        if len(self.steps) != 1:
            raise ValueError(f"Trajectory.as_sample: a single-turn sample is a one-step trajectory, this one has "
                             f"{len(self.steps)} steps")
        (s,) = self.steps
        return Sample(prompt_ids=s.context_ids, completion_ids=s.token_ids, logprobs=s.logprobs, versions=s.versions,
                      finish_reason=s.finish_reason, reveal_steps=s.reveal_steps)

    @property
    def versions(self) -> list[int]:
        """The policy versions of every generated token, in order."""
        return [v for s in self.steps for v in s.versions]


@dataclass(frozen=True)
class RolloutTask:
    """One runner call on a worker: `group_size` trajectories for each prompt."""

    task_id: int
    prompts: list[list[int]]
    """Prompt token ids, one entry per prompt (not repeated per trajectory)."""
    group_size: int
    """Trajectories per prompt (GRPO's G): the runner returns len(prompts) x group_size, prompt-contiguous."""
    sampling: SamplingParams
    """Sampling for the task (its seed makes the task reproducible)."""


# --- worker results ------------------------------------------------------------------------------------------------
@dataclass
class GenResult:
    """What `RolloutWorker.run` returns for a task."""

    task_id: int
    trajectories: list[Trajectory]
    """len(task.prompts) x task.group_size, prompt-contiguous."""
    gen_s: float
    """Seconds the worker spent on the task (including weights loaded mid-task)."""
    load_s: float
    """Seconds of that spent loading newer weights (between engine calls, or the pending update before it)."""
    version: int
    """The engine's policy version when the task finished."""
    worker: int
    """Index of the worker that ran it."""


@dataclass
class CheckResult:
    """A worker's side of the weight-sync probe check of one policy version."""

    version: int
    logprobs: list[list[float]] | None
    """The probe's T=1 log-probs scored right after loading `version`; None if the worker never loaded it."""
    holds: int
    """The engine's policy version now."""


@dataclass
class ScoreResult:
    """Log-probs of given completions under the worker's current policy."""

    logprobs: list[list[float]]
    version: int


@dataclass
class WorkerInfo:
    """Where a worker runs (written to the run's `workers.json`)."""

    index: int
    pid: int
    host: str
    core: int | None
    version: int
    threads: int
    device: str


@dataclass
class RolloutBatch:
    """Everything the trainer's update needs, already padded. Built by `trainers.grpo.batch.collate`."""

    input_ids: torch.Tensor  # [B, P+L] prompt (left-padded) + completion (right-padded)
    attention_mask: torch.Tensor  # [B, P+L] 1 for real tokens
    response_mask: torch.Tensor  # [B, L] 1 for completion tokens that count in the loss
    behav_logprobs: torch.Tensor  # [B, L] engine log-probs (0 where response_mask is 0)
    versions: torch.Tensor  # [B, L] policy version per token (-1 where masked)
    advantages: torch.Tensor  # [B] one per sequence (broadcast over tokens by the loss)
    rewards: torch.Tensor  # [B]
    group_ids: torch.Tensor  # [B] which prompt each sample came from
    prompt_len: int  # P: completion token j sits at input position P + j
    reveal_steps: torch.Tensor | None = None  # [B, L] denoising step per completion token (-1: padding); diffusion only

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: torch.Tensor | slice) -> "RolloutBatch":
        return RolloutBatch(
            input_ids=self.input_ids[idx],
            attention_mask=self.attention_mask[idx],
            response_mask=self.response_mask[idx],
            behav_logprobs=self.behav_logprobs[idx],
            versions=self.versions[idx],
            advantages=self.advantages[idx],
            rewards=self.rewards[idx],
            group_ids=self.group_ids[idx],
            prompt_len=self.prompt_len,
            reveal_steps=None if self.reveal_steps is None else self.reveal_steps[idx],
        )
