"""Zoo model `tiny-guesser`: a policy for TextArena's GuessTheNumber-v0 (`textarena/GuessTheNumber-v0`: a number in
1..20, "higher"/"lower" hints, 10 turns by its prompt and 11 guesses in fact (textarena 0.7.4 ends the game after
the 11th); a win scores 1, a loss 1 - |last guess - target| / 19).

A small Llama (the character tokenizer, 2048 positions: TextArena's first observation alone is 516 characters) warm-
started by SFT on episodes of a NOISY scripted expert, played against the real TextArena env and rendered to ids
exactly as the multi_turn runner renders them (`trainers.sft.tiny_agent.encode_episodes`; loss on the utterances and
their EOS only). The expert keeps the interval the hints leave, [lo, hi], and at each turn guesses its midpoint (binary
search: every game won within 5 guesses) with probability 1 - sloppy - rash, its lowest number (a linear scan:
wins only targets up to 11) with probability `sloppy`, and a random number not yet guessed with
probability `rash`. The scan is the expert's mode, so the greedy policy scans: partly competent (11 of the 20
targets are within its turns), with binary search in its distribution for RL to find. The build measures greedy
success and return on the training seeds and on the evaluation seeds and refuses a model outside its band.

GuessTheNumber has no hidden-object split: held-out evaluation is on seeds 10^6 + i, never trained on, whose targets
are the same 20 numbers the training seeds draw.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from rl.zoo import MODELS, ArchSpec, ZooBuildError, ZooModel, build_tokenizer

GAME = "textarena/GuessTheNumber-v0"
GUESSER_ARCH = ArchSpec(hidden=128, layers=2, heads=2, intermediate=256, max_positions=2048)
TINY_GUESSER_SFT = {"env": GAME, "episodes": 3000, "sloppy": 0.6, "rash": 0.1, "max_steps": 800, "batch_size": 16,
                    "lr": 3e-3, "warmup": 50}
TINY_GUESSER_BAND = {"episodes": 64, "success_min": 0.25, "success_max": 0.8, "max_new_tokens": 8}
"""Greedy, on training seeds 0..episodes-1 and on evaluation seeds 10^6 + i: success within [success_min,
success_max] on both (it plays the game, and leaves room for RL: binary search wins every game)."""
HINT = re.compile(r"target number is (higher|lower)")


def expert_guess(lo: int, hi: int, guessed: set[int], low: int, high: int, rng, sloppy: float, rash: float) -> int:
    """The noisy expert's next guess, given the interval [lo, hi] the hints leave and the numbers already guessed."""
    u = rng.random()
    if u < rash:
        return int(rng.choice([k for k in range(low, high + 1) if k not in guessed]))
    feasible = [k for k in range(lo, hi + 1) if k not in guessed]
    return feasible[0] if u < rash + sloppy else (lo + hi) // 2


def expert_episodes(game_id: str, seeds, sloppy: float, rash: float, rng) -> list[list[tuple[str, str]]]:
    """Noisy-expert episodes of a TextArena GuessTheNumber game as [(utterance, reply), ...], intro first."""
    from envs.text.textarena import TextArenaGame

    game = TextArenaGame(game_id.split("/", 1)[1])
    low, high = game.env.min_number, game.env.max_number
    out = []
    for seed in seeds:
        turns = [("", game.reset(int(seed)))]
        lo, hi, guessed, done = low, high, set(), False
        while not done:
            k = expert_guess(lo, hi, guessed, low, high, rng, sloppy, rash)
            guessed.add(k)
            reply, _, done, _ = game.step(f"[{k}]")
            hint = HINT.search(reply)
            if hint and hint.group(1) == "higher":
                lo = max(lo, k + 1)
            elif hint:
                hi = min(hi, k - 1)
            turns.append((f"[{k}]", reply))
        out.append(turns)
    return out


def build_tiny_guesser(out_dir: Path, seed: int) -> dict:
    from rollout.runners.multi_turn import MultiTurnRunner
    from trainers.sft.tiny_agent import sft_on_episodes

    s = TINY_GUESSER_SFT
    t0 = time.time()
    tok = build_tokenizer()
    tok.save_pretrained(out_dir)
    runner = MultiTurnRunner(env=s["env"], tokenizer_path=str(out_dir), max_context=GUESSER_ARCH.max_positions)
    rng = np.random.default_rng([seed, 43])
    episodes = expert_episodes(s["env"], rng.integers(0, 2**31, s["episodes"]), s["sloppy"], s["rash"], rng)
    return sft_on_episodes(out_dir, GUESSER_ARCH, tok, runner, episodes, s, seed, t0)


def measure_guesser(model_dir: Path, seeds: list[int], max_new_tokens: int) -> dict:
    from rollout.hf_engine import HFEngine
    from rollout.runners.multi_turn import MultiTurnRunner
    from trainers.agents.evaluate import evaluate_agent

    runner = MultiTurnRunner(env=GAME, tokenizer_path=str(model_dir), max_context=GUESSER_ARCH.max_positions)
    return evaluate_agent(HFEngine(str(model_dir), seed=0), runner, seeds, max_new_tokens)


def check_tiny_guesser(out_dir: Path, seed: int, record: dict) -> dict:
    b = TINY_GUESSER_BAND
    q = {"train": measure_guesser(out_dir, list(range(b["episodes"])), b["max_new_tokens"]),
         "eval": measure_guesser(out_dir, [10**6 + i for i in range(b["episodes"])], b["max_new_tokens"])}
    for name, m in q.items():
        if not b["success_min"] <= m["eval/success"] <= b["success_max"]:
            raise ZooBuildError(
                f"zoo model 'tiny-guesser' (seed {seed}) built outside its band: greedy success on the {name} seeds "
                f"{m['eval/success']:.3f} (expected {b['success_min']}..{b['success_max']}), mean return "
                f"{m['eval/return']:.3f} on {b['episodes']} episodes; final SFT loss "
                f"{record.get('final_sft_loss', float('nan')):.3f}. The model was not cached. This is a bug in the "
                f"warm-start recipe (trainers/sft/tiny_guesser.py TINY_GUESSER_SFT): please report it with this message")
    return {"held_out": q, "band": b}


MODELS.register("tiny-guesser")(ZooModel(
    build=build_tiny_guesser, check=check_tiny_guesser,
    recipe={"kind": "sft-agent", "arch": asdict(GUESSER_ARCH), "sft": TINY_GUESSER_SFT, "band": TINY_GUESSER_BAND,
            "version": 1}))
