"""`rl eval`: held-out accuracy of any model (zoo name, local HF directory, or a run's checkpoint)."""
from __future__ import annotations

import time

from rl.zoo import resolve_model_path
from trainers.grpo.config import GRPOConfig


def evaluate_model(cfg: GRPOConfig) -> dict:
    """Greedy held-out accuracy of `cfg.model.path` on the test split the training runs evaluate on."""
    from envs.datasets import load_prompts
    from envs.prompting import Prompter
    from rollout.engine import make_engine
    from trainers.grpo.policy import load_tokenizer
    from trainers.grpo.inputs import eval_reward_set
    from trainers.grpo.trainer import evaluate

    model_dir = resolve_model_path(cfg.model.path)
    tok = load_tokenizer(model_dir)  # the trainer's: left padding, eos as pad if the tokenizer has none
    d, r = cfg.data, cfg.rollout
    rows = load_prompts(d.name, "test", d.eval_size, 0, d.prompt_key, d.answer_key, d.test_split)  # as training evals
    engine = make_engine(r.engine, str(model_dir), dtype=cfg.model.dtype, seed=cfg.seed, options=r.engine_options,
                         estimator=cfg.model.estimator)
    t0 = time.time()
    try:
        out = evaluate(engine, Prompter.for_data(tok, d, str(model_dir)), rows, eval_reward_set(cfg), cfg.eval.max_new_tokens)
    finally:
        engine.close()
    return {"model": str(model_dir), "dataset": d.name, "split": "test", "size": len(rows), "engine": r.engine,
            **out, "eval_s": time.time() - t0}
