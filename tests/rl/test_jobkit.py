"""The job scaffold: start/resume restores the loop state and RNG after the job built its modules, the evaluation
before training runs once per run, checkpoints come every N and at the end, and the summary's fixed keys."""
import json
import random

import numpy as np
import pytest
import torch

from rl.config import CheckpointConfig, LogConfig
from rl.errors import OrchardError
from rl.jobkit import checkpoint, checkpoint_due, evaluate_before, make_tracker, start, summarize, write_state
from rl.rundir import RunDir


def test_checkpoint_due_every_n_and_at_the_end():
    assert [s for s in range(1, 11) if checkpoint_due(s, 10, 3)] == [3, 6, 9, 10]
    assert [s for s in range(1, 11) if checkpoint_due(s, 10, 0)] == [10]
    # a job advancing 4 steps per call (segments): a multiple of 3 inside (prev, step] makes it due
    assert [s for s in (4, 8, 12) if checkpoint_due(s, 12, 3, prev=s - 4)] == [4, 8, 12]
    assert [s for s in (4, 8, 12, 16) if checkpoint_due(s, 16, 5, prev=s - 4)] == [8, 12, 16]


def _train(run: RunDir, steps: int, draws: list, interrupt_after: int | None = None) -> dict:
    """A job in miniature: one random draw per step (its "training"), a checkpoint every 2 steps."""
    job = start(run, seed=7)
    state = job.load_state("state.pt")
    evals = []
    before = evaluate_before(run, state.get("eval_before"), lambda: evals.append(1) or 0.5, "eval/x", tensorboard=False)
    tracker = make_tracker(run, LogConfig(tensorboard=False, progress=False), steps, job.step, {}, "test")
    for step in range(job.step + 1, steps + 1):
        draws.append((random.random(), float(np.random.rand()), torch.rand(1).item()))
        tracker.log(step, {"x": float(step)})
        checkpoint(run, step, steps, CheckpointConfig(every=2, keep=5),
                   lambda d: write_state(d / "state.pt", {"step": step, "eval_before": before}))
        if step == interrupt_after:
            tracker.close()
            return {"evals": len(evals)}
    tracker.close()
    return {**summarize(job, {"algo": "test"}, "eval/x", before, 0.75), "evals": len(evals)}


def test_resume_continues_the_rng_streams_and_keeps_the_first_evaluation(tmp_path):
    straight, resumed = [], []
    s1 = _train(RunDir(tmp_path / "a"), 6, straight)
    assert s1["evals"] == 1
    run = RunDir(tmp_path / "b")
    _train(run, 6, resumed, interrupt_after=5)  # dies after step 5: its last checkpoint is step 4
    del resumed[4:]
    s2 = _train(run, 6, resumed)
    assert resumed == straight  # python, numpy and torch streams continue where the checkpoint left them
    assert s2["evals"] == 0 and s2["eval/x_before"] == 0.5  # evaluated once, in the first attempt
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2, 3, 4, 5, 6]  # step 5's first row was dropped
    assert {k: s2[k] for k in ("eval/x_after", "eval/x_gain")} == {"eval/x_after": 0.75, "eval/x_gain": 0.25}
    assert s2["final_checkpoint"].endswith("step-6") and s2["wall_time_s"] >= 0 and s2["algo"] == "test"


def test_json_loop_state_and_a_missing_state_file(tmp_path):
    run = RunDir(tmp_path)
    with run.checkpoint_writer(3) as d:
        (d / "meta.json").write_text(json.dumps({"update": 3}))
    job = start(run, seed=None)
    assert job.resumed and job.step == 3 and job.load_state("meta.json") == {"update": 3}
    with pytest.raises(OrchardError, match="has no state.pt: it was not written by this job"):
        job.load_state("state.pt")
    assert start(RunDir(tmp_path / "fresh"), seed=None).load_state("meta.json") == {}
