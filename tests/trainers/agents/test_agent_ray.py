"""The agent jobs' training episodes through the rollout controller on real Ray workers: `agent_grpo` with 2 Ray
rollout workers and max_staleness 1 trains (the policy moves), logs staleness within the bound, passes the
weight-sync probe check on every worker, and survives a worker SIGKILLed mid-episode (its episodes are replayed
from their seeds: every drawn seed consumed exactly once)."""
import json
from pathlib import Path

import pytest
import torch

from rl.cli import launch
from trainers.agents.context import iteration_seeds

ENVS = Path(__file__).parent / "ray_envs.py"


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ORCHARD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.slow
def test_agent_grpo_on_two_ray_workers_with_staleness_probe_check_and_a_killed_worker(tmp_path):
    marker = tmp_path / "killed"
    s = launch("configs/grpo_agent_twenty_questions.yaml", [
        "policy.path=random-3m", f"env={ENVS}:DiesOnce", f"env_kwargs={{marker: {marker}}}", "iterations=3",
        "grpo.seeds_per_iter=2", "grpo.group_size=4", "rollout.max_new_tokens=4", "eval.episodes=2",
        "eval.every=3", "policy.lr=1e-2", "cluster.backend=ray", "cluster.rollout_workers=2", "max_staleness=1",
        "log.progress=false", "log.tensorboard=false", "checkpoint.every=1", "checkpoint.keep=3",
        f"run_dir={tmp_path / 'run'}"])
    assert marker.exists()  # a worker really died
    ledger = s["rollout_ledger"]
    assert ledger["worker_restarts"] == 1 and ledger["requeued_tasks"] >= 1
    assert ledger["draws"] == ledger["consumed"] == 6 and ledger["duplicates"] == 0 and ledger["outstanding"] == 0
    assert s["episodes"] == 24 and s["backend"] == "ray" and s["rollout_workers"] == 2

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("step", 0) > 0]
    assert [r["step"] for r in steps] == [1, 2, 3]
    # staleness: never beyond the bound, and the workers did run ahead (iteration 2+ trained on version it-2)
    assert all(r["offpolicy/staleness_max"] <= 1 for r in steps)
    assert max(r["offpolicy/staleness_max"] for r in steps) == 1
    assert all(abs(sum(r[f"offpolicy/staleness_frac_{k}"] for k in (0, 1)) - 1) < 1e-9 for r in steps)
    # the weight sync was verified on the workers after updates that changed the policy
    assert sum(r.get("sync/checks", 0) for r in steps) >= 2
    assert all(r["sync/probe_max_abs_err"] <= 1e-4 for r in steps if "sync/probe_max_abs_err" in r)
    assert any(r["loss/policy"] != 0 for r in steps)
    p1 = torch.load(tmp_path / "run" / "checkpoints" / "step-1" / "policy.pt", weights_only=True)
    p3 = torch.load(tmp_path / "run" / "checkpoints" / "step-3" / "policy.pt", weights_only=True)
    assert any(not torch.equal(p1[k], p3[k]) for k in p1)
    # the seeds trained on are the job's own seed stream (the replayed episodes kept theirs)
    from rl.config import load_config

    cfg = load_config(tmp_path / "run" / "config.yaml")
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-3" / "state.pt", weights_only=False)
    assert state["rollouts"]["seeds"]["drawn"] == 6 and state["rollouts"]["controller"]["pending"] == []
    assert len({*iteration_seeds(cfg, 1, 2), *iteration_seeds(cfg, 2, 2), *iteration_seeds(cfg, 3, 2)}) <= 6
    workers = json.loads((tmp_path / "run" / "workers.json").read_text())
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
