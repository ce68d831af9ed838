"""rl bench agents' bookkeeping: the same episode budget for every algorithm, and episodes-to-target."""
import argparse

from rl.bench.agents import add_arguments, episodes_to_reach, job_overrides


def test_every_algorithm_gets_the_same_episode_budget(tmp_path):
    p = argparse.ArgumentParser()
    add_arguments(p)
    a = p.parse_args(["--episodes", "128", "--episodes-per-iter", "8", "--grpo-seeds", "4", "--group-size", "8",
                      "--eval-every-episodes", "32"])
    for algo, iters, every in (("archer", 16, 4), ("agent_grpo", 4, 1), ("filtered_bc", 16, 4)):
        o = job_overrides("twenty_questions", algo, 0, a, tmp_path)
        assert f"iterations={iters}" in o and f"eval.every={every}" in o and f"algo={algo}" in o
        assert "env=twenty_questions" in o


def test_episodes_to_reach():
    pts = [(0, -12.0, 0.7), (32, -13.0, 0.6), (64, -11.0, 0.8)]
    assert episodes_to_reach(pts, -11.5) == 64 and episodes_to_reach(pts, -12.0) == 0
    assert episodes_to_reach(pts, -10.0) is None
