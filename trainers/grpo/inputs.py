"""Everything a GRPO job reads besides the weights, loaded and checked before any weights load (seconds of model
loading and Ray start-up should not come before a typo in a column name).

`prepare_inputs(cfg, model_dir)`, in order, each failing with an error naming the config key:
1. the tokenizer (model.path) and the prompt format it implies (data.format: auto/text/chat, data.system_prompt);
2. the train and eval rows (data.name, data.test_split, data.prompt_key / data.answer_key);
3. the reward functions (reward.*, eval.reward): they load, take TRL's keyword arguments, and every column a
   function requires is a dataset column (or bound in its kwargs);
4. one rendered prompt of each split (the chat template runs), and that the longest rendered prompt plus
   rollout.max_new_tokens / eval.max_new_tokens fits the model's `max_position_embeddings`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from envs.prompting import Prompter
from rewards import RewardSet, RewardSpec
from rl.errors import ConfigError, RewardError
from trainers.grpo.config import GRPOConfig


@dataclass
class Inputs:
    tok: object
    """The trainer's tokenizer (left padding, a pad token)."""
    prompter: Prompter
    """The tokenizer bound to the resolved prompt format (`prompter.format` is `text` or `chat`)."""
    train_rows: list[dict]
    train_ids: list[list[int]]
    """Every training prompt rendered to token ids (once: the length check and the controller both use them)."""
    eval_rows: list[dict]
    reward_set: RewardSet
    """The training rewards (`reward`)."""
    eval_reward_set: RewardSet
    """The held-out accuracy's reward (`eval.reward`)."""


def eval_reward_set(cfg: GRPOConfig) -> RewardSet:
    return RewardSet([RewardSpec(fn=cfg.eval.reward)], timeout_s=cfg.reward_timeout_s, on_error="raise")


def check_reward_columns(reward_set: RewardSet, rows: list[dict], key: str, data_name) -> None:
    """Every column a reward function requires is one of the rows' columns; a ConfigError naming `key` otherwise."""
    columns = [k for k in rows[0] if k != "prompt"]
    try:
        reward_set.check_columns(columns)
    except RewardError as e:
        raise ConfigError(f"{key}: {e} (data.name={data_name})") from None


def max_positions(model_dir: Path) -> int | None:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return cfg.get("max_position_embeddings") or cfg.get("n_positions")


def prepare_inputs(cfg: GRPOConfig, model_dir: Path) -> Inputs:
    from envs.datasets import load_prompts
    from trainers.grpo.policy import load_tokenizer

    d = cfg.data
    tok = load_tokenizer(model_dir)
    prompter = Prompter.for_data(tok, d, model=str(model_dir))
    train_rows = load_prompts(d.name, "train", d.train_size, cfg.seed, d.prompt_key, d.answer_key, d.test_split)
    eval_rows = load_prompts(d.name, "test", d.eval_size, 0, d.prompt_key, d.answer_key, d.test_split)  # fixed set
    reward_set = RewardSet(cfg.reward, timeout_s=cfg.reward_timeout_s, on_error=cfg.on_reward_error)
    check_reward_columns(reward_set, train_rows, "reward", d.name)
    eval_set = eval_reward_set(cfg)
    check_reward_columns(eval_set, eval_rows, "eval.reward", d.name)
    limit = max_positions(model_dir)
    train_ids = [prompter.ids(r) for r in train_rows]  # the template (or tokenizer) runs before any weights load
    eval_ids = [prompter.ids(r) for r in eval_rows]
    for ids, new, key in ((train_ids, cfg.rollout.max_new_tokens, "rollout.max_new_tokens"),
                          (eval_ids, cfg.eval.max_new_tokens, "eval.max_new_tokens")):
        if limit:
            longest = max(len(x) for x in ids)
            if longest + new > limit:
                raise ConfigError(f"the longest rendered prompt ({longest} tokens, data.format={prompter.format}) plus "
                                  f"{key}={new} exceeds the model's max_position_embeddings={limit} ({model_dir})")
    return Inputs(tok, prompter, train_rows, train_ids, eval_rows, reward_set, eval_set)
