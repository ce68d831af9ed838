"""The agent jobs' side of the rollout controller (`trainers/agents/rollouts.py`): the seed stream is the
iteration seeds block after block and resumes; staleness is counted per token and per episode (hand-computed); on
the local backend the episodes come back group-contiguous from the job's seeds, and a weight sync that did not
deliver the trainer's weights fails the probe check, naming the worker and the version."""
from pathlib import Path

import pytest
import torch

from rl.config import load_config
from rl.errors import WeightSyncError
from rl.rundir import RunDir
from rollout.staleness import staleness_metrics
from rollout.types import Step, Trajectory
from trainers.agents.context import build_context, iteration_seeds
from trainers.agents.rollouts import AgentRollouts, SeedStream

ENVS = Path(__file__).parent / "ray_envs.py"


def test_seed_stream_is_the_iteration_seeds_block_after_block_and_resumes():
    cfg = load_config("configs/grpo_agent_twenty_questions.yaml", ["grpo.seeds_per_iter=3"])
    s = SeedStream(cfg, 3)
    want = iteration_seeds(cfg, 1, 3) + iteration_seeds(cfg, 2, 3) + iteration_seeds(cfg, 3, 3)
    got = s.next(2) + s.next(4)
    resumed = SeedStream(cfg, 3)
    resumed.load_state_dict(s.state_dict())
    assert got + resumed.next(3) == want and len(set(want)) == 9


def _traj(*versions_per_step):
    return Trajectory([Step(context_ids=[0], token_ids=[1] * len(v), logprobs=[0.0] * len(v), versions=list(v))
                       for v in versions_per_step])


def test_staleness_metrics_per_token_and_per_episode():
    # trainer at version it-1 = 4: tokens of versions 4,4,3 | 3,3 -> staleness 0,0,1 | 1,1
    m = staleness_metrics([t.versions for t in (_traj([4, 4], [3]), _traj([3, 3]))], step=5, max_staleness=1)
    assert m["offpolicy/staleness_mean"] == pytest.approx(3 / 5)
    assert m["offpolicy/staleness_max"] == 1.0  # each episode counts its oldest token: 1 and 1
    assert m["offpolicy/staleness_frac_0"] == 0.0 and m["offpolicy/staleness_frac_1"] == 1.0
    assert staleness_metrics([], step=1, max_staleness=0)["offpolicy/staleness_max"] == 0.0


@pytest.fixture
def rollouts(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHARD_CACHE", str(tmp_path / "cache"))
    cfg = load_config("configs/grpo_agent_twenty_questions.yaml", [
        "policy.path=random-3m", f"env={ENVS}:Parity", "iterations=3", "grpo.seeds_per_iter=2", "grpo.group_size=2",
        "rollout.max_new_tokens=4", "cluster.backend=local"])
    ctx = build_context(cfg)
    r = AgentRollouts(ctx, RunDir(tmp_path / "run"), 0, None)
    yield ctx, r
    r.close()


def test_local_backend_episodes_and_a_broken_sync_fails_the_probe_check(rollouts):
    ctx, r = rollouts
    trajs, m = r.collect(1)
    assert len(trajs) == 4 and m["offpolicy/staleness_max"] == 0.0 and m["rollout/turns"] == 2.0
    seeds = iteration_seeds(ctx.cfg, 1, 2)  # group-contiguous: each seed's 2 episodes together
    intros = [ctx.tok.decode(t.steps[0].context_ids) for t in trajs]
    assert all(f"say something ({s % 7})" in x for x, s in zip(intros, [seeds[0]] * 2 + [seeds[1]] * 2))
    assert [len(t.steps) for t in trajs] == [2] * 4 and len(r.probe) == 4
    with torch.no_grad():
        for p in ctx.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    metrics: dict = {}
    r.publish(1, metrics)  # the real sync: the worker serves the changed policy
    _, m = r.collect(2)  # the worker's check of version 1 came back: its log-probs are the trainer's
    assert m["sync/checks"] == 1 and m["sync/probe_max_abs_err"] <= 1e-4
    stale = {k: v.clone() for k, v in ctx.policy.state_dict().items()}
    with torch.no_grad():
        for p in ctx.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    r.source.state = lambda: stale  # a sync that ships the old weights: the worker's log-probs no longer match
    with pytest.raises(WeightSyncError, match="policy version 2: rollout worker 0"):
        r.publish(2, metrics)
        r.ctrl.drain_checks(metrics)
