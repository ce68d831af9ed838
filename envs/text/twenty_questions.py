"""`twenty_questions` and `guess_my_city`: ArCHer's two guessing games with a rule-based oracle.

ArCHer's oracle is a fine-tuned flan-t5 (weights on the authors' drive); ours is an object x attribute table and a
keyword parser, so the games run on a CPU with no network and the oracle is exact. The agent asks yes/no
questions; the oracle answers from the hidden object's row of the table:
- an utterance that names an object of the table is a guess: "Correct!" and the episode ends (reward 0), or "No.";
- otherwise, one that names exactly one attribute (or a synonym) is answered "Yes." / "No.";
- anything else is answered "Invalid question.".
Every turn that does not end the game costs -1; at most `max_turns` (20) turns. The hidden object is drawn from
the `split` ("train" or "test": a fixed, seed-independent partition of the table) by the episode seed, so
evaluation on `split: test` is on objects never hidden during training.

`expert_question(env)` is the scripted expert (a decision tree over the whole table, attributes in a fixed
order); the zoo's `tiny-agent` is warm-started on a noisy version of it (trainers/sft/tiny_agent.py).
"""
from __future__ import annotations

import re

import numpy as np

from envs.text.base import TEXT_ENVS

# attribute -> words that ask about it (the first is the one the expert uses)
OBJECT_ATTRIBUTES = {"animal": ("animal", "alive", "creature"), "big": ("big", "large", "huge"),
                     "water": ("water", "sea", "ocean", "swim"), "edible": ("edible", "eat", "food"),
                     "metal": ("metal", "metallic", "steel"), "round": ("round", "circular", "sphere"),
                     "legs": ("legs", "leg", "walk"), "wood": ("wood", "wooden"), "white": ("white",),
                     "soft": ("soft", "fluffy")}
# object: its attributes in OBJECT_ATTRIBUTES order (animal, big, water, edible, metal, round, legs, wood, white, soft)
OBJECTS = {
    "dog": "1000001001", "horse": "1100001000", "whale": "1110000000", "shark": "1111000000", "cow": "1101001000", "chicken": "1001001011",
    "fish": "1011000001", "frog": "1010001001", "turtle": "1010011000", "crab": "1011011000", "hedgehog": "1000011000", "pig": "1101011000",
    "apple": "0001010000", "banana": "0001000001", "melon": "0101010000", "coconut": "0011010000", "coin": "0000110000", "key": "0000100000",
    "car": "0100100000", "boat": "0110100110", "anchor": "0010100000", "ball": "0000010011", "chair": "0000001100", "table": "0100001100",
    "sponge": "0010000001", "bell": "0100110000", "seaweed": "0011000001", "island": "0110000000", "planet": "0100010000",
    "can": "0001110000", "buoy": "0010110010", "tank": "0101100000",
}
CITY_ATTRIBUTES = {"europe": ("europe", "european"), "asia": ("asia", "asian"), "america": ("america", "american"),
                   "coast": ("coast", "coastal", "sea"), "capital": ("capital",), "huge": ("huge", "million", "big"),
                   "hot": ("hot", "warm", "tropical")}
# city: (europe, asia, america, coast, capital, huge, hot)
CITIES = {
    "paris": "1000110", "london": "1001110", "rome": "1000101", "madrid": "1000111", "lisbon": "1001101",
    "berlin": "1000100", "barcelona": "1001001", "milan": "1000000", "oslo": "1001100", "athens": "1001111",
    "tokyo": "0101110", "beijing": "0100110", "mumbai": "0101011", "bangkok": "0100111", "seoul": "0100100",
    "shanghai": "0101010", "manila": "0101111", "delhi": "0100011", "chicago": "0010000", "toronto": "0010010",
    "lima": "0011111", "miami": "0011001", "boston": "0011000", "mexico": "0010111", "cairo": "0000111",
    "sydney": "0001011", "lagos": "0001111", "nairobi": "0000101",
}


def _split(names: list[str], split: str) -> list[str]:
    """Every fourth name (in table order) is held out for `split: test`; the rest are `train`."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if split == "all":
        return list(names)
    return [n for i, n in enumerate(names) if (i % 4 == 3) == (split == "test")]


class AttributeGame:
    """A guessing game over a name x attribute table (the two games below differ only in their tables)."""

    attributes: dict[str, tuple[str, ...]]
    table: dict[str, str]
    intro: str

    def __init__(self, split: str = "train", max_turns: int = 20):
        self.names = _split(list(self.table), split)
        self.max_turns = max_turns
        self.split = split
        self.hidden, self.turn, self.done = "", 0, True

    def reset(self, seed: int) -> str:
        self.hidden = self.names[int(np.random.default_rng([seed, 20]).integers(len(self.names)))]
        self.turn, self.done, self.asked = 0, False, []
        return self.intro

    def answer(self, utterance: str) -> tuple[str, bool]:
        """The oracle: (reply, guessed correctly)."""
        words = re.findall(r"[a-z]+", utterance.lower())
        named = [w for w in words if w in self.table]
        if named:
            return ("Correct!\n", True) if self.hidden in named else ("No.\n", False)
        asked = {a for a, syn in self.attributes.items() if any(w in syn for w in words)}
        if len(asked) != 1:
            return "Invalid question.\n", False
        (a,) = asked
        col = list(self.attributes).index(a)
        return ("Yes.\n" if self.table[self.hidden][col] == "1" else "No.\n"), False

    def step(self, utterance: str) -> tuple[str, float, bool, dict]:
        if self.done:
            raise RuntimeError("step after the episode ended (call reset)")
        self.turn += 1
        self.asked.append(utterance)
        reply, success = self.answer(utterance)
        self.done = success or self.turn >= self.max_turns
        return reply, (0.0 if success else -1.0), self.done, {"success": success, "hidden": self.hidden}


@TEXT_ENVS.register("twenty_questions")
class TwentyQuestions(AttributeGame):
    attributes, table = OBJECT_ATTRIBUTES, OBJECTS
    intro = "Guess the object.\n"


@TEXT_ENVS.register("guess_my_city")
class GuessMyCity(AttributeGame):
    attributes, table = CITY_ATTRIBUTES, CITIES
    intro = "Guess the city.\n"


def question(game: AttributeGame, attribute: str) -> str:
    return f"Is it {attribute}?"


def guess(name: str) -> str:
    return f"Is it {name}?"


def expert_utterance(game: AttributeGame, candidates: list[str], rng: np.random.Generator | None = None,
                     sloppy: float = 0.0, rash: float = 0.0) -> str:
    """The scripted expert's next utterance given the names still consistent with the answers so far (over the
    whole table: the expert knows every object). Sharp: one candidate left -> guess it; else ask the first
    attribute, in table order, that splits the candidates. With an `rng`, it is noisy: with probability `rash` it
    guesses a random candidate while several remain, and with probability `sloppy` it asks the next attribute in
    table order that it has not asked yet, whether or not it helps (a wasted turn when it does not split the
    candidates, e.g. once only one is left)."""
    r = rng.random() if rng is not None else 1.0
    names = list(game.attributes)
    if len(candidates) > 1 and r < rash:
        return guess(candidates[int(rng.integers(len(candidates)))])
    if r < rash + sloppy:
        asked = {a for u in game.asked for a, syn in game.attributes.items()
                 if any(w in syn for w in re.findall(r"[a-z]+", u.lower()))}
        left = [a for a in names if a not in asked]
        if left:
            return question(game, left[0])
    if len(candidates) == 1:
        return guess(candidates[0])
    for col, a in enumerate(names):
        if len({game.table[c][col] for c in candidates}) == 2:
            return question(game, a)
    return guess(candidates[0])  # identical rows: any of them


def filter_candidates(game: AttributeGame, candidates: list[str], utterance: str, reply: str) -> list[str]:
    """The candidates still consistent after `utterance` got `reply`."""
    words = re.findall(r"[a-z]+", utterance.lower())
    named = [w for w in words if w in game.table]
    if named:
        return [c for c in candidates if c not in named] if reply.startswith("No") else [named[0]]
    asked = [a for a, syn in game.attributes.items() if any(w in syn for w in words)]
    if len(asked) != 1 or reply.startswith("Invalid"):
        return candidates
    col, want = list(game.attributes).index(asked[0]), "1" if reply.startswith("Yes") else "0"
    return [c for c in candidates if game.table[c][col] == want]
