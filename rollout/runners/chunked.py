"""`chunked`: partial rollouts. A task is generated in chunks of `chunk_tokens` new tokens, and the worker loads
the newest weights it has been offered between chunks, so a sample's later tokens may carry a newer policy
version than its first ones (`rollout.partial_chunk_tokens`)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from rollout.runners.base import RUNNERS, Between
from rollout.types import RolloutTask, Sample, SamplingParams, Step, Trajectory


def chunk_seed(seed: int | None, k: int) -> int | None:
    """The sampling seed of chunk k of a task seeded `seed`: chunk 0 keeps the task's seed, later chunks get a
    deterministic hash of (seed, k); None stays None (the engine then seeds from its own call counter)."""
    if seed is None or k == 0:
        return seed
    h = hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % 2**31


def generate_in_chunks(engine, prompts: list[list[int]], sampling: SamplingParams, chunk_tokens: int,
                       between: Between | None = None) -> list[Sample]:
    """`engine.generate` in chunks of at most `chunk_tokens` new tokens: after each chunk, samples that produced
    EOS or reached `sampling.max_new_tokens` stop; the others continue from prompt + completion so far with the
    remaining budget. `between(k)` runs before chunk k >= 1 (the worker loads newer weights there).

    Engine-agnostic: each chunk is an ordinary `generate` call, so its tokens carry the version and behaviour
    log-probs of the weights that sampled them (the engine recomputes the prefix with its current weights).
    Reproducible: chunk k is seeded `chunk_seed(sampling.seed, k)`, so the same seed and the same weight
    timeline give the same samples; with unchanged weights and greedy decoding the result equals one call's.
    """
    n = len(prompts)
    comp: list[list[int]] = [[] for _ in range(n)]
    lps: list[list[float]] = [[] for _ in range(n)]
    vers: list[list[int]] = [[] for _ in range(n)]
    reason = ["length"] * n
    active, done, k = list(range(n)), 0, 0  # every active sample has exactly `done` tokens
    while active:
        if k > 0 and between is not None:
            between(k)
        budget = min(chunk_tokens, sampling.max_new_tokens - done)
        sp = replace(sampling, max_new_tokens=budget, seed=chunk_seed(sampling.seed, k))
        out = engine.generate([list(prompts[i]) + comp[i] for i in active], sp)
        still = []
        for i, s in zip(active, out):
            if not s.completion_ids:
                raise RuntimeError(f"generate_in_chunks: the engine returned an empty completion for a budget of "
                                   f"{budget} tokens")
            comp[i] += s.completion_ids
            lps[i] += s.logprobs
            vers[i] += s.versions
            reason[i] = s.finish_reason
            # fewer tokens than asked without EOS: the engine stopped it (e.g. its context limit); it is finished
            if s.finish_reason != "stop" and len(s.completion_ids) == budget and done + budget < sampling.max_new_tokens:
                still.append(i)
        active, done, k = still, done + budget, k + 1
    return [Sample(prompt_ids=list(p), completion_ids=comp[i], logprobs=lps[i], versions=vers[i],
                   finish_reason=reason[i]) for i, p in enumerate(prompts)]


@RUNNERS.register("chunked")
@dataclass(frozen=True)
class ChunkedRunner:
    """Each prompt repeated `group_size` times, generated with `generate_in_chunks`; one step per completion
    (its tokens may span policy versions)."""

    chunk_tokens: int
    mid_task_weights = True

    def __post_init__(self):
        if self.chunk_tokens < 1:
            raise ValueError(f"chunked runner: chunk_tokens must be >= 1, got {self.chunk_tokens}")

    @classmethod
    def from_config(cls, rollout) -> "ChunkedRunner":
        if not rollout.partial_chunk_tokens:
            raise ValueError("rollout.runner=chunked needs rollout.partial_chunk_tokens (new tokens per chunk)")
        return cls(chunk_tokens=rollout.partial_chunk_tokens)

    def run(self, engine, task: RolloutTask, between: Between) -> list[Trajectory]:
        prompts = [p for p in task.prompts for _ in range(task.group_size)]
        samples = generate_in_chunks(engine, prompts, task.sampling, self.chunk_tokens, between)
        return [Trajectory([Step.from_sample(s)]) for s in samples]
