"""`textarena/<GameId>`: TextArena's single-player games (`textarena==0.7.4` on PyPI) behind the text-env API.

TextArena plays a game as `env.reset(num_players, seed)`, then per turn `pid, obs = env.get_observation()` and
`done, info = env.step(action)`, and at the end `rewards, game_info = env.close()`. Its observation is the whole
history so far; this adapter returns only what is new since the agent's last utterance (so the multi-turn runner
appends it as ids, never re-tokenising the history). The reward is 0 per turn and the game's final reward for
player 0 at the end; `info["success"]` is a win, a final reward of 1. (TextArena's single-player games end with 1 for
a win and partial credit otherwise: GuessTheNumber gives 1 - |last guess - target| / 19 when its turns run out or on
an invalid move, so a loss can end with 0.84.)

Two-player games play against a fixed opponent (`env_kwargs.opponent`): envs/text/textarena_opponents.py.
Games that do not work here (see README "Multi-turn agents"):
TwentyQuestions / GuessWho / Debate / ScenarioPlanning (need an OpenRouter key), the word games that call
`nltk.download` at import (Wordle, Hangman, WordLadder, SpellingBee, WordSearch, ...; fail offline), and Chess,
Checkers, ReverseTicTacToe, UltimateTexasHoldem, Klondike (Python 3.12 syntax; we run 3.11).
"""
from __future__ import annotations

from rl.errors import ConfigError

REWARDS = ("game", "win")
"""`env_kwargs.reward`: "game" (TextArena's own final reward, partial credit included) or "win" (1 for a win, else 0:
GuessTheNumber's partial credit pays 0.95 for quitting with an invalid move next to the target, and GRPO learns to)."""


class TextArenaGame:
    """One TextArena single-player game as a `TextEnv`."""

    def __init__(self, game_id: str, reward: str = "game", **make_kwargs):
        import textarena as ta

        self.game_id, self.reward, self.make_kwargs = game_id, reward, make_kwargs
        self.env = ta.make(game_id, **make_kwargs)
        self.seen = ""

    def _new_text(self) -> str:
        pid, obs = self.env.get_observation()
        obs = obs if isinstance(obs, str) else str(obs)
        new = obs[len(self.seen):] if obs.startswith(self.seen) else obs
        self.seen = obs
        return new

    def reset(self, seed: int) -> str:
        import textarena as ta

        # a new TextArena env per episode: its observation wrappers keep the previous episodes' text across reset()
        self.env = ta.make(self.game_id, **self.make_kwargs)
        self.env.reset(num_players=1, seed=seed)
        self.seen = ""
        return self._new_text()

    def step(self, utterance: str) -> tuple[str, float, bool, dict]:
        done, info = self.env.step(utterance)
        if not done:
            return self._new_text(), 0.0, False, {}
        rewards, game_info = self.env.close()
        r = float(rewards.get(0, 0.0)) if isinstance(rewards, dict) else 0.0
        reason = str((game_info or {}).get(0, {}).get("reason", "")) if isinstance(game_info, dict) else ""
        return "", self.scored(r, r >= 1.0), True, {"success": r >= 1.0, "reason": reason}

    def scored(self, game_reward: float, won: bool) -> float:
        """The episode's final reward under `env_kwargs.reward`."""
        return game_reward if self.reward == "game" else float(won)


def textarena_factory(game_id: str, kwargs: dict, key: str):
    try:
        import textarena  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"{key}: textarena/{game_id} needs the textarena package (pip install textarena==0.7.4): "
                          f"{e}") from e
    from envs.text.textarena_opponents import DUEL_KWARGS, duel_factory, seats

    if kwargs.get("reward", "game") not in REWARDS:
        raise ConfigError(f"{key}: env_kwargs.reward must be one of {', '.join(REWARDS)}, got {kwargs['reward']!r}")
    make_kwargs = {k: v for k, v in kwargs.items() if k not in DUEL_KWARGS}
    try:
        TextArenaGame(game_id, **make_kwargs)
    except Exception as e:
        raise ConfigError(f"{key}: TextArena game '{game_id}' cannot be made: {type(e).__name__}: {e}") from e
    if seats(game_id, {k: v for k, v in make_kwargs.items() if k != "reward"}) == 2:
        return duel_factory(game_id, kwargs, key)
    if make_kwargs != kwargs:
        raise ConfigError(f"{key}: env_kwargs {', '.join(sorted(set(kwargs) - set(make_kwargs)))} only apply to "
                          f"two-player games; TextArena game '{game_id}' is not one")
    return lambda: TextArenaGame(game_id, **kwargs)
