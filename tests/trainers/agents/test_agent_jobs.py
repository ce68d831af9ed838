"""Tiny end-to-end agent jobs: ArCHer trains on a user env from a file, checkpoints, resumes bit-for-bit and is
evaluated by `rl eval`; multi-turn GRPO and filtered BC run a tiny job each; bad env references fail at load."""
from pathlib import Path

import pytest
import torch

from rl.cli import launch
from rl.config import load_config
from rl.errors import ConfigError

USER_ENV = Path(__file__).parents[2] / "envs" / "fixtures" / "user_text_envs.py"
TINY = ["policy.path=random-3m", "archer.critic_path=tiny-encoder", "iterations=3", "rollout.episodes_per_iter=4",
        "rollout.max_new_tokens=4", "eval.episodes=3", "eval.every=2", "archer.critic_steps=2", "archer.actor_steps=1",
        "archer.batch_size=4", "archer.warmup_iters=1", "grpo.seeds_per_iter=2", "grpo.group_size=2", "bc.steps=1",
        "log.progress=false", "log.tensorboard=false", "checkpoint.every=1", "checkpoint.keep=3",
        "cluster.backend=local"]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ORCHARD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def user_env(n=2):
    return [f"env={USER_ENV}:CountDown", f"env_kwargs={{n: {n}}}"]


def policy_state(run_dir: Path, step: int) -> dict:
    return torch.load(run_dir / "checkpoints" / f"step-{step}" / "policy.pt", weights_only=True)


def ptx_file(tmp_path) -> list[str]:
    """PPO-ptx on two demonstration episodes of CountDown (a JSONL file of episodes)."""
    import json

    f = tmp_path / "demos.jsonl"
    f.write_text("".join(json.dumps({"episode": [["", f"count down from {n}\n"], *[[str(k), f"{k - 1}\n"]
                                                                                  for k in range(n, 0, -1)]]}) + "\n"
                         for n in (2, 3)))
    return ["policy.ptx_coef=0.5", f"policy.ptx_data={f}", "policy.ptx_batch_size=2"]


def test_archer_user_env_trains_checkpoints_resumes_and_evaluates(tmp_path):
    full = launch("configs/archer_twenty_questions.yaml", [*TINY, *user_env(), *ptx_file(tmp_path),
                                                           f"run_dir={tmp_path / 'full'}"])
    assert full["episodes"] == 12 and full["algo"] == "archer"
    state = torch.load(tmp_path / "full" / "checkpoints" / "step-3" / "state.pt", weights_only=False)
    assert set(state["learner"]) == {"critic", "target", "critic_opt", "buffer", "rng"}
    assert 2 * 12 <= len(state["learner"]["buffer"]["items"]) <= 3 * 12  # one transition per turn, 2-3 turns each
    # the actor trained after the warm-up: iteration 1 (warm-up) left the policy alone, later ones moved it
    p1, p3 = policy_state(tmp_path / "full", 1), policy_state(tmp_path / "full", 3)
    assert any(not torch.equal(p1[k], p3[k]) for k in p1)
    import json

    logged = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    ptx = [m["loss/ptx"] for m in logged if "loss/ptx" in m]
    assert len(ptx) == 2 and all(v > 0 for v in ptx)  # iterations 2 and 3 took actor steps, each with the ptx term

    # stop after 2 iterations, resume to 3: the same final policy and critic as the uninterrupted run
    launch("configs/archer_twenty_questions.yaml", [*TINY, *user_env(), *ptx_file(tmp_path), "iterations=2",
                                                     f"run_dir={tmp_path / 'cut'}"])
    launch(None, ["iterations=3"], resume=str(tmp_path / "cut"))
    a, b = policy_state(tmp_path / "full", 3), policy_state(tmp_path / "cut", 3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(tmp_path / "full" / "checkpoints" / "step-3" / "state.pt", weights_only=False)["learner"]
    cb = torch.load(tmp_path / "cut" / "checkpoints" / "step-3" / "state.pt", weights_only=False)["learner"]
    assert all(torch.equal(ca["critic"][k], cb["critic"][k]) for k in ca["critic"])

    from rl.config import get_job

    cfg = load_config(tmp_path / "full" / "config.yaml")
    result = get_job("archer").evaluate(cfg, tmp_path / "full" / "checkpoints" / "step-3")
    assert set(result) >= {"eval/success", "eval/return", "eval/turns"} and result["eval/turns"] in (2.0, 3.0, 7 / 3, 8 / 3)


@pytest.mark.parametrize("algo", ["agent_grpo", "filtered_bc"])
def test_grpo_and_filtered_bc_tiny_jobs(tmp_path, algo):
    s = launch("configs/grpo_agent_twenty_questions.yaml", [*TINY, f"algo={algo}", "iterations=2", "env_kwargs={max_turns: 3}",
                                                 "policy.kl_coef=0.1", "grpo.epochs=2",
                                                 f"run_dir={tmp_path}"])
    assert s["algo"] == algo and s["episodes"] == 8


def test_bad_env_reference_fails_at_load_naming_the_key():
    with pytest.raises(ConfigError, match="env: unknown text env 'twenty_question'"):
        load_config("configs/archer_twenty_questions.yaml", ["env=twenty_question"])
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        load_config("configs/archer_twenty_questions.yaml", [f"env={USER_ENV}:Nope"])
