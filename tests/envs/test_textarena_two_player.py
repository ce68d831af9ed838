"""Two-player TextArena games against a fixed opponent (envs/text/textarena_opponents.py): the text-env contract
with the random opponent, user opponents from a file, the agent's win flag, the errors, and a frozen checkpoint."""
import json
from pathlib import Path

import numpy as np
import pytest

from envs.text import TextEnvBatch, TextEnvError, env_factory
from envs.text.textarena_opponents import OpponentError, RandomOpponent, connect_four_moves, listed_moves, nim_moves
from rl.errors import ConfigError

OPPONENTS = Path(__file__).parent / "fixtures" / "user_opponents.py"
TTT = "textarena/TicTacToe-v0"


@pytest.mark.parametrize("name, kwargs", [(TTT, {}), (TTT, {"agent_player": 1}), ("textarena/KuhnPoker-v0", {}),
                                          ("textarena/ConnectFour-v0", {})])
def test_contract_against_the_random_opponent(name, kwargs):
    """As test_contract_every_registered_env: reset gives a str; random utterances always get (str, float, bool,
    JSON-able dict); every episode ends; the same seeds replay the same episodes (the opponent's moves included)."""
    batch = TextEnvBatch(name, env_factory(name, {"opponent": "random", **kwargs}), max_turns=50)
    words = [f"[{k}]" for k in range(9)] + ["[check]", "[bet]", "[call]", "[fold]", "[col 3]", "[col 5]", "hello"]

    def play(seeds, rng):
        obs = batch.reset(seeds)
        assert all(isinstance(o, str) and o for o in obs)
        log = [obs]
        for _ in range(50):
            if all(batch.done):
                break
            out = batch.step([None if d else words[int(rng.integers(len(words)))] for d in batch.done])
            for o, r, d, info in zip(*out):
                assert isinstance(o, str) and isinstance(r, float) and isinstance(d, bool)
                json.dumps(info)
            log.append(out)
        assert all(batch.done) and batch.n_dropped == 0
        return log

    seeds = [0, 1, 2, 3]
    first = play(seeds, np.random.default_rng(0))
    assert play(seeds, np.random.default_rng(0)) == first
    assert any("[Player " in o for step in first[1:] for o in step[0])  # the opponent's moves reach the agent
    finals = [info for step in first[1:] for info, d in zip(step[3], step[2]) if info]
    assert len(finals) == len(seeds) and all(set(i) == {"success", "reason"} for i in finals)


def test_random_opponent_plays_only_listed_moves_and_replays_from_the_seed():
    obs = "[GAME] Available Moves: '[0]', '[4]'\n[Player 0] Available: none\n[GAME] Valid moves: '[2, 3]', '[5, 4]'"
    assert listed_moves(obs) == ["[2, 3]", "[5, 4]"]  # the last line that lists moves in brackets
    assert listed_moves("Available Flat Stones: 15") == []
    board = "[GAME] Board state:\n0 1 2 3 4 5 6\n-------------\n. X . . . . O\n. X . . . . O"
    assert connect_four_moves(board) == ["[col 0]", "[col 2]", "[col 3]", "[col 4]", "[col 5]"]
    assert nim_moves("Current Pile:\n  pile 0: 5\nCurrent Pile:\n  pile 0: 2\n  pile 1: 0") == ["[0 1]", "[0 2]"]
    tic = "Available Moves: " + ", ".join(f"'[{k}]'" for k in range(9))
    one, again, other = (RandomOpponent("TicTacToe-v0", seed) for seed in (5, 5, 6))
    picks = [one(tic, 1) for _ in range(30)]
    assert [again(tic, 1) for _ in range(30)] == picks != [other(tic, 1) for _ in range(30)]
    assert set(picks) <= {f"[{k}]" for k in range(9)} and len(set(picks)) > 3
    with pytest.raises(ValueError, match="finds no moves for Battleship-v0"):
        RandomOpponent("Battleship-v0", 0)("no listing here", 1)


def test_user_opponent_from_a_file_gets_its_own_observation_and_its_move_lands():
    env = env_factory(TTT, {"opponent": f"{OPPONENTS}:lowest"})()
    env.reset(0)
    obs, r, done, info = env.step("[0]")
    assert not done and r == 0.0 and info == {}
    assert "[Player 1] [1] player_id=1 saw_own_prompt=True" in obs  # its move, and it saw player 1's observation
    assert "Player 1 placed their symbol (X) in cell 1." in obs
    assert obs.startswith("\n[Player 0] [0]") and "You are Player" not in obs  # only the text new since [0]
    assert "Available Moves: '[2]', '[3]', '[4]', '[5]', '[6]', '[7]', '[8]'" in obs


def test_agent_at_seat_one_sees_the_opponents_opening_move():
    env = env_factory(TTT, {"opponent": f"{OPPONENTS}:lowest", "agent_player": 1})()
    first = env.reset(0)
    assert "You are Player 1 in Tic Tac Toe" in first and "Player 0 placed their symbol (O) in cell 0." in first


@pytest.mark.parametrize("moves, reward, success, reason", [
    (["[4]", "[2]", "[6]"], 1.0, True, "Player 0 has won!"),  # against `lowest` (0, 1): the 2-4-6 diagonal
    (["[8]", "[7]", "[5]"], -1.0, False, "Player 1 has won!"),  # `lowest` fills the top row
    (["[1]", "[3]", "[4]", "[6]", "[8]"], 0.0, False, "The game is a draw!"),  # a draw is not a success
    (["no move", "still none"], -1.0, False, "does not follow the correct format"),  # two invalid moves lose
])
def test_success_is_the_agents_win(moves, reward, success, reason):
    env = env_factory(TTT, {"opponent": f"{OPPONENTS}:lowest"})()
    env.reset(0)
    for k, move in enumerate(moves):
        obs, r, done, info = env.step(move)
        assert done == (k == len(moves) - 1)
    assert (obs, r, info["success"]) == ("", reward, success) and reason in info["reason"]


def test_a_deliberately_bad_opponent_loses_on_its_invalid_moves():
    env = env_factory(TTT, {"opponent": f"{OPPONENTS}:out_of_range"})()
    env.reset(0)
    obs, r, done, info = env.step("[4]")  # the opponent's [9] twice: it loses, and the agent wins at once
    assert done and r == 1.0 and info["success"] is True
    env = env_factory(TTT, {"opponent": f"{OPPONENTS}:out_of_range", "agent_player": 1})()
    assert "You are Player 1 in Tic Tac Toe" in env.reset(0)  # the opponent opens and loses before the agent moves,
    assert env.step("anything") == ("", 1.0, True, info)  # and the agent's first step gets the result


def test_config_errors_name_the_key_and_the_opponent():
    with pytest.raises(ConfigError, match="env: TextArena game 'TicTacToe-v0' is a two-player game: set "
                                          "env_kwargs.opponent"):
        env_factory(TTT)
    with pytest.raises(ConfigError, match="env: env_kwargs.opponent: unknown opponent 'greedy'"):
        env_factory(TTT, {"opponent": "greedy"})
    with pytest.raises(ConfigError, match="env_kwargs.opponent .*has no attribute 'lowst'.*did you mean 'lowest'"):
        env_factory(TTT, {"opponent": f"{OPPONENTS}:lowst"})
    with pytest.raises(ConfigError, match="env_kwargs.opponent: '/no/such/model' is neither a local model"):
        env_factory(TTT, {"opponent": "checkpoint:/no/such/model"})
    with pytest.raises(ConfigError, match="env_kwargs.agent_player must be 0 or 1, got 2"):
        env_factory(TTT, {"opponent": "random", "agent_player": 2})
    with pytest.raises(ConfigError, match="env_kwargs opponent only apply to two-player games"):
        env_factory("textarena/GuessTheNumber-v0", {"opponent": "random"})


@pytest.mark.parametrize("fn, agent_player, turn, what", [("raises", 0, 1, "raised RuntimeError: opponent crashed"),
                                                          ("not_a_str", 0, 1, "returned int, expected str"),
                                                          ("raises", 1, 0, "raised RuntimeError: opponent crashed")])
def test_broken_opponent_stops_naming_game_seed_and_turn(fn, agent_player, turn, what):
    env = env_factory(TTT, {"opponent": f"{OPPONENTS}:{fn}", "agent_player": agent_player})()
    expected = f"of textarena/TicTacToe-v0 (episode seed 7, turn {turn}): {what}"
    with pytest.raises(OpponentError) as e:
        env.reset(7)
        env.step("[4]")
    assert expected in str(e.value)
    batch = TextEnvBatch(TTT, env_factory(TTT, {"opponent": f"{OPPONENTS}:{fn}", "agent_player": agent_player}), 9)
    with pytest.raises(TextEnvError, match=f"episode seed 7, turn {turn}"):
        batch.reset([7])
        batch.step(["[4]"])


def test_checkpoint_opponent_plays_greedily_and_the_game_still_ends(long_context_policy):
    from envs.text.textarena_opponents import _load_checkpoint

    factory = env_factory(TTT, {"opponent": f"checkpoint:{long_context_policy}", "opponent_max_new_tokens": 4})
    misses = _load_checkpoint.cache_info().misses
    results = []
    for _ in range(2):
        env = factory()
        env.reset(0)
        for k in range(9):
            obs, r, done, info = env.step(f"[{k}]")
            if done:
                break
        assert done and isinstance(r, float) and isinstance(info["success"], bool) and info["reason"]
        results.append((k, r, info))
    assert results[0] == results[1]  # greedy: the same moves every time
    assert _load_checkpoint.cache_info().misses == misses + 1  # loaded once
