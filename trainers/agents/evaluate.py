"""Held-out evaluation of an agent: greedy episodes on fixed seeds of the env's test split."""
from __future__ import annotations

from rollout.runners.multi_turn import MultiTurnRunner
from rollout.types import SamplingParams
from trainers.agents.episodes import episode_return, episode_success


def evaluate_agent(engine, runner: MultiTurnRunner, seeds: list[int], max_new_tokens: int,
                   temperature: float = 0.0) -> dict:
    """Success rate, mean return and mean turns over one episode per seed (greedy by default)."""
    trajs = runner.run_episodes(engine, seeds, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                              seed=12345))
    n = len(trajs)
    return {"eval/success": sum(map(episode_success, trajs)) / n,
            "eval/return": sum(map(episode_return, trajs)) / n,
            "eval/turns": sum(len(t.steps) for t in trajs) / n}
