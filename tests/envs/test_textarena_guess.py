"""TextArena's GuessTheNumber behind the text-env API (the adapter's win flag and episode isolation) and the noisy
expert the zoo's `tiny-guesser` is warm-started on."""
import json

import numpy as np
import pytest

from envs.text.textarena import TextArenaGame
from trainers.sft.tiny_guesser import GAME, expert_episodes, expert_guess


def test_reset_starts_a_new_episode_with_no_earlier_text():
    g = TextArenaGame("GuessTheNumber-v0")
    first = g.reset(7)
    g.step("[3]")
    g.step("[4]")
    assert g.reset(7) == first  # TextArena's wrappers would keep the earlier episode's text across reset()
    assert first.count("You are playing Guess The Number") == 1


def test_success_is_a_win_not_partial_credit():
    g = TextArenaGame("GuessTheNumber-v0")
    g.reset(3)
    target = g.env.state.game_state["game_number"]
    wrong = [k for k in range(1, 21) if k != target]
    for k in wrong[:10]:  # the game says 10 turns; textarena 0.7.4 ends it after the 11th guess
        obs, r, done, info = g.step(f"[{k}]")
        assert not done and r == 0.0
    obs, r, done, info = g.step(f"[{wrong[10]}]")  # the 11th wrong guess: partial credit, a loss
    assert done and 0.0 < r < 1.0 and info["success"] is False
    g.reset(3)
    obs, r, done, info = g.step(f"[{target}]")
    assert done and r == 1.0 and info["success"] is True


def test_expert_guess_modes():
    rng = np.random.default_rng(0)
    assert expert_guess(5, 12, {4, 13}, 1, 20, rng, sloppy=0.0, rash=0.0) == 8  # midpoint of [5, 12]
    assert expert_guess(5, 12, {4, 5, 13}, 1, 20, rng, sloppy=1.0, rash=0.0) == 6  # lowest not yet guessed
    picks = {expert_guess(5, 12, {4, 13}, 1, 20, rng, sloppy=0.0, rash=1.0) for _ in range(200)}
    assert picks == set(range(1, 21)) - {4, 13}  # rash: any number not yet guessed


def test_sharp_expert_wins_every_game_within_five_guesses_and_the_scan_does_not():
    rng = np.random.default_rng(0)
    sharp = expert_episodes(GAME, range(40), sloppy=0.0, rash=0.0, rng=rng)
    assert all(len(ep) - 1 <= 5 and ep[-1][1] == "" for ep in sharp)
    scan = expert_episodes(GAME, range(40), sloppy=1.0, rash=0.0, rng=rng)
    assert {len(ep) - 1 for ep in scan} <= set(range(1, 12))
    assert any(len(ep) - 1 == 11 for ep in scan)  # targets above 11 use every turn
    assert all(u == f"[{k + 1}]" for ep in scan for k, (u, _) in enumerate(ep[1:]))  # 1, 2, 3, ...


@pytest.mark.parametrize("config", ["configs/grpo_agent_guess.yaml", "configs/archer_guess.yaml"])
def test_guess_the_number_recipes_run_a_tiny_job(tmp_path, long_context_policy, config):
    """The TextArena recipes end to end (the zoo's tiny-guesser replaced by a random long-context model): episodes
    are played against the real game, trained on and evaluated on held-out seeds."""
    from rl.cli import launch

    s = launch(config, [f"policy.path={long_context_policy}", "iterations=2", "rollout.episodes_per_iter=4",
                        "grpo.seeds_per_iter=2", "grpo.group_size=2", "rollout.max_new_tokens=4", "eval.episodes=2",
                        "eval.every=2", "archer.critic_steps=2", "archer.actor_steps=1", "archer.batch_size=4",
                        "archer.warmup_iters=1", "log.progress=false", "log.tensorboard=false", "cluster.backend=local",
                        f"run_dir={tmp_path}"])
    assert s["episodes"] == 8
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    returns = [r["rollout/return"] for r in rows if "rollout/return" in r] + [r["eval/return"] for r in rows
                                                                           if "eval/return" in r]
    assert len(returns) >= 3 and all(0.0 <= x <= 1.0 for x in returns)  # the game's rewards: a win 1, else partial


def test_win_reward_pays_a_win_only():
    """env_kwargs.reward=win: a loss (here an invalid move next to the target, which TextArena pays 0.95) scores 0."""
    from envs.text.base import env_factory
    from rl.errors import ConfigError

    for reward, loss in (("game", 1 - 1 / 19), ("win", 0.0)):
        g = env_factory("textarena/GuessTheNumber-v0", {"reward": reward})()
        g.reset(3)
        target = g.env.state.game_state["game_number"]
        near = target + 1 if target < 20 else target - 1
        g.step(f"[{near}]")
        assert g.step("no number")[2] is False  # TextArena forgives one invalid move, then ends the game
        obs, r, done, info = g.step("no number")
        assert done and info["success"] is False and r == pytest.approx(loss)
        g.reset(3)
        assert g.step(f"[{target}]")[1:3] == (1.0, True)
    with pytest.raises(ConfigError, match=r"env: env_kwargs.reward must be one of game, win, got 'wins'"):
        env_factory("textarena/GuessTheNumber-v0", {"reward": "wins"}, key="env")
