"""Rollout runners: the built-in ones keep the engine's samples as one-step trajectories, and a NEW runner
registered in this file alone (a toy two-turn agent over a scripted env) runs through the real `RolloutController`
on the local and the Ray backend: every trajectory comes back with its 2 steps, the env's observation between
them, per-token versions within the staleness bound, and a ledger with draws == consumed and no duplicates."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from rollout.controller import RolloutController
from rollout.engine import EngineSpec, make_engine
from rollout.runners import RUNNERS, Between
from rollout.runners.chunked import ChunkedRunner, generate_in_chunks
from rollout.runners.single_turn import SingleTurnRunner
from rollout.types import RolloutTask, SamplingParams, Step, Trajectory
from rollout.workers import WorkerPool
from tests.rollout.test_weight_sync import Source
from trainers.grpo.batch import PromptSampler

ROOT = Path(__file__).resolve().parents[2]


def observation(turn: list[int]) -> list[int]:
    """The scripted env's reply to an utterance: a fixed marker and the utterance's length, as token ids."""
    return [7, 8, 10 + len(turn)]


@RUNNERS.register("toy_two_turn")
@dataclass(frozen=True)
class TwoTurnRunner:
    """Turn 1 generates from the prompt; the scripted env appends its observation; turn 2 generates from the whole
    conversation so far. Rewards: 0 after turn 1 (not done), the second turn's length after turn 2 (done)."""

    tokens_per_turn: int = 3
    mid_task_weights = True  # newer weights may be loaded between the turns

    @classmethod
    def from_config(cls, rollout) -> "TwoTurnRunner":
        return cls()

    def run(self, engine, task: RolloutTask, between: Between) -> list[Trajectory]:
        sp = replace(task.sampling, max_new_tokens=self.tokens_per_turn)
        prompts = [p for p in task.prompts for _ in range(task.group_size)]
        first = engine.generate(prompts, sp)
        between(1)
        contexts = [list(p) + s.completion_ids + observation(s.completion_ids) for p, s in zip(prompts, first)]
        second = engine.generate(contexts, replace(sp, seed=None if sp.seed is None else sp.seed + 1))
        return [Trajectory([Step.from_sample(a, reward=0.0, done=False, info={"turn": 1}),
                            Step.from_sample(b, reward=float(len(b.completion_ids)), done=True, info={"turn": 2})])
                for a, b in zip(first, second)]


def test_single_turn_and_chunked_runners_are_the_engine_calls(model_dir, prompts):
    """single_turn: one `generate` of each prompt repeated G times; chunked: `generate_in_chunks` of the same."""
    assert {"single_turn", "chunked", "toy_two_turn"} <= set(RUNNERS.names())
    e = make_engine("hf", str(model_dir), seed=0)
    sp = SamplingParams(max_new_tokens=6, temperature=1.0, seed=4)
    task = RolloutTask(0, prompts[:3], 2, sp)
    repeated = [p for p in prompts[:3] for _ in range(2)]
    for runner, expected in ((SingleTurnRunner(), e.generate(repeated, sp)),
                             (ChunkedRunner(4), generate_in_chunks(e, repeated, sp, 4))):
        trajs = runner.run(e, task, lambda k: None)
        assert [len(t.steps) for t in trajs] == [1] * 6
        assert [t.as_sample() for t in trajs] == expected, type(runner).__name__
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1"):
        ChunkedRunner(0)


def _controller(pool: WorkerPool, prompts, steps: int, max_staleness: int) -> RolloutController:
    """2 groups of 2 trajectories per step, one prompt per task; a trajectory's reward is its env rewards' sum."""
    def score(task, trajectories):
        assert len(trajectories) == len(task.prompt_indices) * task.group_size
        r = torch.tensor([sum(s.reward for s in t.steps) for t in trajectories])  # [n * G]
        return r, torch.ones(len(trajectories), dtype=torch.bool), {}

    return RolloutController(pool, prompt_ids=prompts, sampler=PromptSampler(len(prompts), 0), score_fn=score,
                             group_size=2, groups_per_step=2, max_staleness=max_staleness, prompts_per_task=1,
                             sampling=SamplingParams(max_new_tokens=3, temperature=1.0), seed=0, last_step=steps)


@pytest.mark.parametrize("backend,workers", [("local", 1), ("ray", 2)])
def test_a_runner_registered_in_one_file_runs_through_the_real_controller(request, backend, workers, model_dir,
                                                                          prompts, base_model):
    if backend == "ray":
        request.getfixturevalue("local_ray")
    steps, max_staleness = 3, 1
    pool = WorkerPool(backend, workers, EngineSpec("hf", str(model_dir)), RUNNERS.get("toy_two_turn")(),
                      env_vars={"PYTHONPATH": str(ROOT)})  # Ray actors import this module (the runner's class)
    ctrl = _controller(pool, prompts, steps, max_staleness)
    source, seen = Source(base_model), []
    try:
        ctrl.publish(source, 0)
        for step in range(1, steps + 1):
            groups, m = ctrl.collect(step)
            assert len(groups) == 2 and m["rollout/groups"] == 2
            for g in groups:
                assert len(g.trajectories) == 2 and g.rewards.shape == (2,)
                for t, r in zip(g.trajectories, g.rewards):
                    one, two = t.steps
                    assert one.context_ids == list(prompts[g.prompt_index])
                    assert two.context_ids == one.context_ids + one.token_ids + observation(one.token_ids)
                    assert (one.done, two.done, one.info, two.info) == (False, True, {"turn": 1}, {"turn": 2})
                    assert float(r) == len(two.token_ids)
                    for s in t.steps:
                        assert 0 < len(s.token_ids) <= 3 and len(s.logprobs) == len(s.versions) == len(s.token_ids)
                    assert all(step - 1 - max_staleness <= v <= step - 1 for v in t.versions), (step, t.versions)
                with pytest.raises(ValueError, match="has 2 steps"):  # the single-turn view refuses a 2-step one
                    g.samples
            seen += [g.draw_id for g in groups]
            ctrl.publish(source, step)
        assert m["rollout/mixed_version_frac"] >= 0.0  # the runner loads weights between turns: tracked
        s = ctrl.stats
        assert s["draws"] == s["consumed"] == steps * 2 and s["duplicates"] == 0, s
        assert len(set(seen)) == len(seen) == steps * 2
        assert not ctrl.queue and not ctrl.inflight and not ctrl.buffer
    finally:
        ctrl.close()
