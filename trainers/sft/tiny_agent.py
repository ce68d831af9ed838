"""Zoo models for the multi-turn agents: the policy `tiny-agent` and the critic encoder `tiny-encoder`.

`tiny-agent`: a small Llama (char tokenizer, 512 positions) warm-started by SFT on `twenty_questions` episodes of a
NOISY scripted expert (envs/text/twenty_questions.py `expert_utterance`, train-split hidden objects only): at each
turn it guesses a random candidate with probability `rash` and, with probability `sloppy`, asks the next attribute
in table order whether or not it helps. The sloppy habit is the expert's mode, so the greedy policy wastes turns:
partly competent, with the sharp questions in its distribution for RL to find. Like a pretrained LM that knows what
a dog is, the model also reads one "knowledge" episode per object of the whole table (every attribute asked in order,
then the name), so objects of the test split are known but never hidden in the expert's or RL's episodes. Episodes
are rendered to ids exactly as the multi_turn runner renders them (its `first_ids` / `observation_ids`), and the
loss is on the agent's utterances (and their EOS) only. The build measures greedy held-out (test split) and train
split success and return on fixed seeds and refuses a model outside its band.

`tiny-encoder`: a randomly initialised small BERT encoder with the same character tokenizer: ArCHer's critic body
(ArCHer uses RoBERTa-base; any local HF encoder directory works in its place via `critic.path`).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from rl.zoo import MODELS, ArchSpec, ZooBuildError, ZooModel, build_tokenizer, init_random_model
from trainers.agents.ptx import WARM_START_EPISODES

AGENT_ARCH = ArchSpec(hidden=128, layers=2, heads=2, intermediate=256, max_positions=512)
TINY_AGENT_SFT = {"env": "twenty_questions", "episodes": 3000, "knowledge_repeats": 20, "sloppy": 0.6, "rash": 0.1,
                  "max_steps": 1000, "batch_size": 16, "lr": 3e-3, "warmup": 50}
TINY_AGENT_BAND = {"episodes": 64, "train_success_min": 0.5, "train_return_max": -6.5, "max_new_tokens": 16}
"""Greedy, on seeds 0..episodes-1: train-split success >= train_success_min (it learnt the game) and mean return
<= train_return_max (it still wastes turns: room for RL; the sharp expert averages about -5.4 on the train split, asking every attribute costs -10)."""
ENCODER = {"hidden": 128, "layers": 2, "heads": 2, "intermediate": 256, "max_positions": 512}


def expert_episodes(env_name: str, split: str, seeds, sloppy: float, rash: float, rng) -> list[list[tuple[str, str]]]:
    """Noisy-expert episodes as [(utterance, reply), ...], with the intro first as ("", intro)."""
    from envs.text import TEXT_ENVS
    from envs.text.twenty_questions import expert_utterance, filter_candidates

    game = TEXT_ENVS.get(env_name)(split=split)
    out = []
    for seed in seeds:
        turns = [("", game.reset(int(seed)))]
        cand, done = list(game.table), False
        while not done:
            u = expert_utterance(game, cand, rng, sloppy=sloppy, rash=rash)
            reply, _, done, _ = game.step(u)
            cand = filter_candidates(game, cand, u, reply)
            turns.append((u, reply))
        out.append(turns)
    return out


def knowledge_episodes(env_name: str) -> list[list[tuple[str, str]]]:
    """One episode per object of the whole table: every attribute asked in table order, then its name."""
    from envs.text import TEXT_ENVS
    from envs.text.twenty_questions import guess, question

    game = TEXT_ENVS.get(env_name)(split="all")
    out = []
    for name, row in game.table.items():
        turns = [("", game.intro)]
        turns += [(question(game, a), "Yes.\n" if bit == "1" else "No.\n") for a, bit in zip(game.attributes, row)]
        out.append(turns + [(guess(name), "Correct!\n")])
    return out


def encode_episodes(runner, episodes) -> tuple:
    """(ids, attention mask, loss mask) [N, n], right-padded: the runner's rendering, loss on utterance + EOS."""
    import torch

    tok = runner.tok
    seqs, masks = [], []
    for ep in episodes:
        ids, mask = list(runner.first_ids(ep[0][1])), [0] * len(runner.first_ids(ep[0][1]))
        for k, (u, reply) in enumerate(ep[1:]):
            utt = tok(u, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids += utt
            mask += [1] * len(utt)
            if k < len(ep) - 2:
                obs = runner.observation_ids(reply, True)
                ids += obs
                mask += [0] * len(obs)
        seqs.append(ids)
        masks.append(mask)
    n = max(map(len, seqs))
    x = torch.full((len(seqs), n), tok.pad_token_id, dtype=torch.long)
    a = torch.zeros((len(seqs), n), dtype=torch.long)
    m = torch.zeros((len(seqs), n))
    for i, (s, k) in enumerate(zip(seqs, masks)):
        x[i, :len(s)], a[i, :len(s)], m[i, :len(k)] = torch.tensor(s), 1, torch.tensor(k, dtype=torch.float32)
    return x, a, m


def build_tiny_agent(out_dir: Path, seed: int) -> dict:
    from rollout.runners.multi_turn import MultiTurnRunner

    s = TINY_AGENT_SFT
    t0 = time.time()
    tok = build_tokenizer()
    tok.save_pretrained(out_dir)
    runner = MultiTurnRunner(env=s["env"], tokenizer_path=str(out_dir))
    rng = np.random.default_rng([seed, 41])
    episodes = expert_episodes(s["env"], "train", rng.integers(0, 2**31, s["episodes"]), s["sloppy"], s["rash"], rng)
    episodes += knowledge_episodes(s["env"]) * s["knowledge_repeats"]
    return sft_on_episodes(out_dir, AGENT_ARCH, tok, runner, episodes, s, seed, t0)


def sft_on_episodes(out_dir: Path, arch, tok, runner, episodes, s: dict, seed: int, t0: float) -> dict:
    """A random `arch` model SFT-trained on `episodes` (rendered by `runner`) with the recipe `s` (max_steps,
    batch_size, lr, warmup) on one torch thread, saved to `out_dir`; the build's measurements."""
    import torch

    from trainers.sft.train import sft

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float rounding on every machine (see trainers/sft/warm_start.py)
    try:
        model = init_random_model(arch, tok, seed)
        losses = sft(model, tok, [], s["max_steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
                     warmup=s["warmup"], encoded=encode_episodes(runner, episodes))
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out_dir, safe_serialization=True)
    return {"sft_steps": len(losses), "final_sft_loss": sum(losses[-20:]) / 20, "build_s": time.time() - t0,
            "sft_episodes": len(episodes), "torch_threads": 1}


def measure_agent(model_dir: Path, env: str, split: str, episodes: int, max_new_tokens: int) -> dict:
    from rollout.hf_engine import HFEngine
    from rollout.runners.multi_turn import MultiTurnRunner
    from trainers.agents.evaluate import evaluate_agent

    runner = MultiTurnRunner(env=env, env_kwargs={"split": split}, tokenizer_path=str(model_dir))
    return evaluate_agent(HFEngine(str(model_dir), seed=0), runner, list(range(episodes)), max_new_tokens)


def check_tiny_agent(out_dir: Path, seed: int, record: dict) -> dict:
    b, env = TINY_AGENT_BAND, TINY_AGENT_SFT["env"]
    q = {split: measure_agent(out_dir, env, split, b["episodes"], b["max_new_tokens"]) for split in ("train", "test")}
    tr = q["train"]
    if not (tr["eval/success"] >= b["train_success_min"] and tr["eval/return"] <= b["train_return_max"]):
        raise ZooBuildError(
            f"zoo model 'tiny-agent' (seed {seed}) built outside its band: greedy train-split success "
            f"{tr['eval/success']:.3f} (expected >= {b['train_success_min']}), mean return {tr['eval/return']:.2f} "
            f"(expected <= {b['train_return_max']}) on {b['episodes']} episodes; final SFT loss "
            f"{record.get('final_sft_loss', float('nan')):.3f}. The model was not cached. This is a bug in the "
            f"warm-start recipe (trainers/sft/tiny_agent.py TINY_AGENT_SFT): please report it with this message")
    return {"held_out": q, "band": b}


def build_tiny_encoder(out_dir: Path, seed: int) -> dict:
    import torch
    from transformers import BertConfig, BertModel

    tok = build_tokenizer()
    e = ENCODER
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=e["hidden"], num_hidden_layers=e["layers"],
                     num_attention_heads=e["heads"], intermediate_size=e["intermediate"],
                     max_position_embeddings=e["max_positions"], pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return {}


WARM_START_EPISODES.register("tiny-agent")(lambda: knowledge_episodes(TINY_AGENT_SFT["env"]))  # policy.ptx_data
MODELS.register("tiny-agent")(ZooModel(
    build=build_tiny_agent, check=check_tiny_agent,
    recipe={"kind": "sft-agent", "arch": asdict(AGENT_ARCH), "sft": TINY_AGENT_SFT, "band": TINY_AGENT_BAND,
            "version": 1}))
MODELS.register("tiny-encoder")(ZooModel(
    build=build_tiny_encoder, recipe={"kind": "random-bert", "arch": ENCODER, "version": 1}))
