"""`textarena/<GameId>` for TextArena's two-player games: the agent plays one seat, a fixed opponent the other.

`env_kwargs.opponent` names the opponent; `env_kwargs.agent_player` (0, the default, or 1) is the agent's seat:

    random                  a scripted baseline: a uniformly random move among those the opponent's latest
                            observation lists in square brackets (TicTacToe's `Available Moves: '[0]', '[4]'`,
                            Othello's `Valid moves:`, KuhnPoker's `Your available actions are:` ...), or from a
                            per-game rule where the game lists none (ConnectFour, Nim, the iterated matrix games);
                            seeded from the episode seed, so an episode replays
    path/to/file.py:func    a user function `func(observation: str, player_id: int) -> str`, loaded as user text
    package.module:func     envs and reward functions are (rewards/loader.py)
    checkpoint:<model>      a frozen causal LM (an HF model directory, or a zoo model name) played greedily on CPU
                            with transformers, its prompt the opponent's own full observation text, at most
                            `env_kwargs.opponent_max_new_tokens` (16) new tokens; loaded once per process

Inside the env's `step`, after the agent's move the opponent moves until it is the agent's turn again or the game
ends (so a game where the opponent moves first, or the agent sits at seat 1, starts with its moves in `reset`). The
agent sees only what is new since its last utterance, as in the single-player adapter; the reward is 0 per turn and
the agent's final reward at the end; `info["success"]` is a win (the agent's final reward above the opponent's: 1
against -1; a draw, 0 and 0, is not). A game that the opponent ends before the agent's first move (two invalid
opening moves) returns its result on the agent's first step, whatever the agent says. An opponent that raises,
returns a non-str, or never hands the turn back stops the episode with an `OpponentError` naming the game, the
episode seed and the turn (the agent's turn count: 0 during reset).

The random opponent reads moves from the whole observation text, the agent's utterances included: TextArena prints
the listing after each move, so the latest one is the game's; an agent that writes a fake listing into its
utterance can still steer it in a game that does not.
"""
from __future__ import annotations

import functools
import random
import re
from typing import Callable

from envs.text.textarena import TextArenaGame
from rl.errors import ConfigError, OrchardError

Opponent = Callable[[str, int], str]
"""A move for `player_id` given its full observation text."""

DUEL_KWARGS = ("opponent", "agent_player", "opponent_max_new_tokens")
"""env_kwargs read by this adapter, not passed on to TextArena's game constructor."""

_MAX_OPPONENT_MOVES = 100
"""Opponent moves in a row after which the game is taken to be stuck (SpiteAndMalice, out of cards, offers only
`[draw]` forever; a real turn is a few moves)."""


class OpponentError(OrchardError):
    """The opponent raised, returned a non-str, or never handed the turn back. Names the game, seed and turn."""


# ---- the random opponent ---------------------------------------------------------------------------------------

_LISTING = re.compile(r"\b(?:available|valid|legal|possible|remaining|options)\b[^:\n]*:(.*)", re.IGNORECASE)
_BRACKETED = re.compile(r"\[[^\[\]\n]+\]")


def listed_moves(observation: str) -> list[str]:
    """The bracketed moves on the last line that lists some (`<available|valid|legal|...> ...: '[a]', '[b]'`)."""
    for line in reversed(observation.splitlines()):
        m = _LISTING.search(line)
        if m and (moves := _BRACKETED.findall(m.group(1))):
            return moves
    return []


def connect_four_moves(observation: str) -> list[str]:
    """`[col c]` for each column whose top cell is empty on the latest board (the row under its header)."""
    lines = observation.splitlines()
    headers = [i for i, line in enumerate(lines) if re.fullmatch(r"0( \d+)+", line.strip())]
    if not headers or headers[-1] + 2 >= len(lines):
        return []
    top = lines[headers[-1] + 2].split()
    return [f"[col {c}]" for c, cell in enumerate(top) if cell == "."]


def nim_moves(observation: str) -> list[str]:
    """`[pile k]` for every pile and count it still holds, from the latest `pile i: n` lines."""
    piles = dict(re.findall(r"^\s*pile (\d+): (\d+)\s*$", observation.rsplit("Current Pile:", 1)[-1], re.MULTILINE))
    return [f"[{p} {k}]" for p, n in piles.items() for k in range(1, int(n) + 1)]


GAME_MOVES: dict[str, Callable[[str], list[str]]] = {
    "ConnectFour": connect_four_moves,
    "Nim": nim_moves,
    "IteratedRockPaperScissors": lambda obs: ["[rock]", "[paper]", "[scissors]"],
    "IteratedMatchingPennies": lambda obs: ["[heads]", "[tails]"],
    "IteratedPrisonersDilemma": lambda obs: ["[Cooperate]", "[Defect]"],
}
"""Per-game move rules for the random opponent (by game name, the id before `-v`), for games listing no moves."""


class RandomOpponent:
    """A uniformly random move among those `GAME_MOVES` or `listed_moves` finds, from a `random.Random(seed)`."""

    def __init__(self, game_id: str, seed: int):
        self.game_id, self.rng = game_id, random.Random(seed)
        self.moves = GAME_MOVES.get(game_id.split("-v")[0], listed_moves)

    def __call__(self, observation: str, player_id: int) -> str:
        moves = self.moves(observation)
        if not moves:
            raise ValueError(f"the random opponent finds no moves for {self.game_id} in its observation (no line "
                             f"lists moves in square brackets and the game has no rule in GAME_MOVES); use a "
                             f"'file.py:func' or 'checkpoint:<model>' opponent. The observation ends: "
                             f"{observation[-300:]!r}")
        return self.rng.choice(moves)


# ---- the checkpoint opponent -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _load_checkpoint(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


class CheckpointOpponent:
    """A frozen causal LM played greedily: its prompt the observation (the last tokens that fit), its move the
    decoded continuation."""

    def __init__(self, path: str, max_new_tokens: int):
        self.path, self.max_new_tokens = path, max_new_tokens

    def __call__(self, observation: str, player_id: int) -> str:
        import torch

        tok, model = _load_checkpoint(self.path)
        ids = tok(observation, return_tensors="pt", add_special_tokens=False)["input_ids"]
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None:
            ids = ids[:, -max(1, limit - self.max_new_tokens):]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=self.max_new_tokens,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# ---- the game --------------------------------------------------------------------------------------------------

class TextArenaDuel(TextArenaGame):
    """One two-player TextArena game as a `TextEnv`: the agent at seat `agent_player`, `opponent(seed)` (a new
    opponent per episode) at the other."""

    def __init__(self, game_id: str, opponent: Callable[[int], Opponent], opponent_name: str, agent_player: int = 0,
                 **make_kwargs):
        super().__init__(game_id, **make_kwargs)
        self.make_opponent, self.opponent_name, self.agent_player = opponent, opponent_name, agent_player
        self.seed, self.turn, self.done = 0, 0, False

    def reset(self, seed: int) -> str:
        import textarena as ta

        self.env = ta.make(self.game_id, **self.make_kwargs)  # a new env per episode, as in TextArenaGame.reset
        self.env.reset(num_players=2, seed=seed)
        self.seed, self.turn, self.seen = seed, 0, ""
        self.opponent = self.make_opponent(seed)
        self.done = self._opponent_moves(False)
        if self.done:  # over before the agent's first move: show the agent its own observation, not the opponent's
            self.env.state.current_player_id = self.agent_player
        return self._new_text()

    def step(self, utterance: str) -> tuple[str, float, bool, dict]:
        self.turn += 1
        if not self.done:
            done, _ = self.env.step(utterance)
            self.done = self._opponent_moves(done)
        if not self.done:
            return self._new_text(), 0.0, False, {}
        return "", *self._result()

    def _opponent_moves(self, done: bool) -> bool:
        """Let the opponent move until it is the agent's turn or the game is over; whether it is over."""
        moves = 0
        while not done and self.env.state.current_player_id != self.agent_player:
            if moves == _MAX_OPPONENT_MOVES:
                raise self._error(f"still has the turn after {moves} moves in a row")
            pid, obs = self.env.get_observation()
            done, _ = self.env.step(self._opponent_move(obs if isinstance(obs, str) else str(obs), pid))
            moves += 1
        return done

    def _opponent_move(self, observation: str, player_id: int) -> str:
        try:
            move = self.opponent(observation, player_id)
        except Exception as e:
            raise self._error(f"raised {type(e).__name__}: {e}") from e
        if not isinstance(move, str):
            raise self._error(f"returned {type(move).__name__}, expected str (its move)")
        return move

    def _error(self, what: str) -> OpponentError:
        return OpponentError(f"opponent '{self.opponent_name}' of textarena/{self.game_id} (episode seed {self.seed}, "
                             f"turn {self.turn}): {what}")

    def _result(self) -> tuple[float, bool, dict]:
        rewards, game_info = self.env.close()
        rewards = rewards if isinstance(rewards, dict) else {}
        mine, theirs = float(rewards.get(self.agent_player, 0.0)), float(rewards.get(1 - self.agent_player, 0.0))
        info = game_info.get(self.agent_player, {}) if isinstance(game_info, dict) else {}
        return self.scored(mine, mine > theirs), True, {"success": mine > theirs, "reason": str(info.get("reason", ""))}


# ---- the factory -----------------------------------------------------------------------------------------------

_SPEC_FORMS = "'random', 'path/to/file.py:func', 'package.module:func' or 'checkpoint:<HF model dir or zoo model>'"


def seats(game_id: str, make_kwargs: dict) -> int | None:
    """How many players TextArena game `game_id` seats: 2 if its reset accepts two (no single-player game's does;
    SpiteAndMalice's and QuantumTicTacToe's also accept one), else 1 if it accepts one, else None (a game for more
    players, or one whose reset fails for another reason). Leaves `random`'s state as it was."""
    import textarena as ta

    state = random.getstate()  # TextArena's reset seeds the global `random`
    try:
        for n in (2, 1):
            try:
                ta.make(game_id, **make_kwargs).reset(num_players=n, seed=0)
                return n
            except Exception:
                continue
        return None
    finally:
        random.setstate(state)


def load_opponent(spec, game_id: str, max_new_tokens: int, key: str) -> Callable[[int], Opponent]:
    """Opponent `spec` as a function of the episode seed. Errors are ConfigErrors naming `key`.env_kwargs.opponent."""
    where = f"{key}: env_kwargs.opponent"
    if spec == "random":
        return lambda seed: RandomOpponent(game_id, seed)
    if isinstance(spec, str) and spec.startswith("checkpoint:"):
        from rl.zoo import resolve_model_path

        path = str(resolve_model_path(spec.removeprefix("checkpoint:"), key=where))
        return lambda seed: CheckpointOpponent(path, max_new_tokens)
    if isinstance(spec, str) and ":" in spec:
        from rewards.loader import load_user_object

        fn = load_user_object(spec, where)
        return lambda seed: fn
    raise ConfigError(f"{where}: unknown opponent {spec!r}; expected {_SPEC_FORMS}")


def duel_factory(game_id: str, kwargs: dict, key: str) -> Callable[[], TextArenaDuel]:
    """The factory for two-player game `game_id` with env_kwargs `kwargs` (DUEL_KWARGS and the game's own)."""
    make_kwargs = {k: v for k, v in kwargs.items() if k not in DUEL_KWARGS}
    spec, agent_player = kwargs.get("opponent"), kwargs.get("agent_player", 0)
    max_new_tokens = kwargs.get("opponent_max_new_tokens", 16)
    if spec is None:
        raise ConfigError(f"{key}: TextArena game '{game_id}' is a two-player game: set env_kwargs.opponent to "
                          f"{_SPEC_FORMS} (the agent plays player 0, or env_kwargs.agent_player)")
    if agent_player not in (0, 1) or isinstance(agent_player, bool):
        raise ConfigError(f"{key}: env_kwargs.agent_player must be 0 or 1, got {agent_player!r}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ConfigError(f"{key}: env_kwargs.opponent_max_new_tokens must be a positive integer, got "
                          f"{max_new_tokens!r}")
    opponent = load_opponent(spec, game_id, max_new_tokens, key)
    return lambda: TextArenaDuel(game_id, opponent, str(spec), agent_player, **make_kwargs)
