"""The text-env API: one contract test over every registered env, the checking batch, user envs from files, and
the rule-based oracle of twenty_questions / guess_my_city."""
import json
from pathlib import Path

import numpy as np
import pytest

from envs.text import TEXT_ENVS, TextEnvBatch, TextEnvError, env_factory
from envs.text.twenty_questions import OBJECTS, TwentyQuestions, GuessMyCity, expert_utterance, filter_candidates
from rl.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "user_text_envs.py"


@pytest.mark.parametrize("name", TEXT_ENVS.names() + ["textarena/GuessTheNumber-v0"])
def test_contract_every_registered_env(name):
    """reset gives a str; random utterances always get (str, finite float, bool, JSON-able dict); every episode ends
    within its max_turns; the same seed replays the same episode."""
    batch = TextEnvBatch(name, env_factory(name), max_turns=50)
    rng = np.random.default_rng(0)
    words = ["Is it big?", "hello", "Is it dog?", "Is it paris?", "", "??", "Is it an animal?"]

    def play(seeds):
        obs = batch.reset(seeds)
        assert all(isinstance(o, str) and o for o in obs)
        log = [obs]
        for _ in range(50):
            if all(batch.done):
                break
            utt = [None if d else words[int(rng.integers(len(words)))] for d in batch.done]
            out = batch.step(utt)
            for o, r, d, info in zip(*out):
                assert isinstance(o, str) and isinstance(r, float) and isinstance(d, bool)
                json.dumps(info)
            log.append(out[:3])
        assert all(batch.done) and batch.n_dropped == 0
        return log

    seeds = [0, 1, 2, 3]
    rng = np.random.default_rng(0)
    first = play(seeds)
    rng = np.random.default_rng(0)
    assert play(seeds) == first


def test_oracle_answers_from_the_table():
    g = TwentyQuestions(split="all")
    g.hidden, g.turn, g.done, g.asked = "whale", 0, False, []
    assert g.step("Is it an animal?")[:3] == ("Yes.\n", -1.0, False)
    assert g.step("is it LARGE") [0] == "Yes.\n"  # synonym, any case
    assert g.step("Is it edible?")[0] == "No.\n"
    assert g.step("Is it big and round?")[0] == "Invalid question.\n"  # two attributes
    assert g.step("Is it a shark?")[:3] == ("No.\n", -1.0, False)
    assert g.step("Is it a whale?")[:3] == ("Correct!\n", 0.0, True)


def test_twenty_turns_at_most_and_minus_one_per_turn():
    g = TwentyQuestions()
    g.reset(0)
    rewards = []
    done = False
    while not done:
        _, r, done, info = g.step("hello")
        rewards.append(r)
    assert rewards == [-1.0] * 20 and not info["success"]


def test_train_test_split_of_hidden_objects():
    train, test = TwentyQuestions("train").names, TwentyQuestions("test").names
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(OBJECTS)
    g = TwentyQuestions("test")
    seen = set()
    for s in range(200):
        g.reset(s)
        seen.add(g.hidden)
    assert seen == set(test)


@pytest.mark.parametrize("cls", [TwentyQuestions, GuessMyCity])
def test_expert_always_succeeds_within_the_table_depth(cls):
    g = cls("all")
    for s in range(60):
        g.reset(s)
        cand, done, turns = list(g.table), False, 0
        while not done:
            u = expert_utterance(g, cand)
            o, r, done, info = g.step(u)
            cand = filter_candidates(g, cand, u, o)
            turns += 1
        assert info["success"] and turns <= len(g.attributes) + 1


def test_user_env_from_file_and_module():
    batch = TextEnvBatch("user", env_factory(f"{FIXTURES}:CountDown", {"n": 2}), max_turns=5)
    assert batch.reset([0, 1]) == ["count down from 2\n", "count down from 3\n"]
    obs, rewards, dones, _ = batch.step(["2", "0"])
    assert obs == ["1\n", "2\n"] and rewards == [1.0, 0.0] and dones == [False, False]
    obs, rewards, dones, _ = batch.step(["1", "2"])
    assert dones == [True, False]
    obs, rewards, dones, _ = batch.step([None, "1"])
    assert obs[0] == "" and dones == [True, True]


def test_user_env_reference_errors_name_the_env():
    with pytest.raises(ConfigError, match="text env .*has no attribute 'CountDwn'.*did you mean 'CountDown'"):
        env_factory(f"{FIXTURES}:CountDwn")
    with pytest.raises(ConfigError, match="env: unknown text env 'twenty_question'.*did you mean 'twenty_questions'"):
        env_factory("twenty_question")
    with pytest.raises(ConfigError, match="cannot be built with env_kwargs"):
        env_factory(f"{FIXTURES}:CountDown", {"m": 1})


@pytest.mark.parametrize("cls, what", [("Raises", "step raised KeyError: 'boom'"),
                                       ("WrongType", "reward is '1', expected a finite number"),
                                       ("WrongCount", "step returned a tuple of 3"),
                                       ("NeverEnds", "still running after max_turns=4")])
def test_broken_env_stops_naming_env_seed_and_turn(cls, what):
    batch = TextEnvBatch(f"{FIXTURES}:{cls}", env_factory(f"{FIXTURES}:{cls}", {"n": 2}), max_turns=4)
    batch.reset([7])
    turn = 2 if cls == "Raises" else (4 if cls == "NeverEnds" else 1)
    with pytest.raises(TextEnvError) as e:
        for _ in range(6):
            batch.step(["x"])
    assert f"{cls}' (episode seed 7, turn {turn})" in str(e.value) and what in str(e.value)


def test_broken_env_episode_dropped_and_counted_when_configured():
    batch = TextEnvBatch("raises", env_factory(f"{FIXTURES}:Raises", {"n": 3}), max_turns=10, on_error="drop")
    batch.reset([0, 1])  # left = 3 and 4: the first raises at its 2nd step, the second at its 3rd
    for _ in range(5):
        if all(batch.done):
            break
        batch.step([None if d else "x" for d in batch.done])
    assert batch.n_dropped == 2 and all(batch.done)
    assert "episode seed 0, turn 2" in batch.dropped[0] and "episode seed 1, turn 3" in batch.dropped[1]
