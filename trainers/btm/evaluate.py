"""The BTM evaluation table: held-out accuracy on every domain of the seed, each expert, each merge, the ensemble
and the dense baseline, with the average over domains and, for each expert, its out-of-domain average.

Every model is scored the way `rl eval` scores it (`trainers.grpo.trainer.evaluate`: greedy completions of the
domain's fixed test split, scored by the domain's reward, > 0.5 correct), under the domain's GRPO config. The
ensemble's prior is estimated on each domain's dev sequences (train-split prompts with their reference answers)
before that domain's evaluation and frozen for it, as BTM does.
"""
from __future__ import annotations

import json
from pathlib import Path

from rl.errors import ConfigError
from trainers.btm.config import BTMConfig, DomainConfig, expert_tree


def domain_config(cfg: BTMConfig, d: DomainConfig, model_path: str):
    from trainers.grpo.config import GRPOConfig

    return GRPOConfig.model_validate(expert_tree(cfg, d, model_path, run_dir="unused"))


def held_out_rows(cfg: BTMConfig, d: DomainConfig, key: str) -> list[dict]:
    """The domain's held-out rows; a ConfigError naming the domain when it has none."""
    from envs.datasets import load_prompts

    try:
        rows = load_prompts(d.data, "test", cfg.eval_size, 0, test_split=d.test_split)
    except ConfigError as e:
        raise ConfigError(f"{key} ('{d.name}', data {d.data}): no held-out split to evaluate on: {e}") from None
    if not rows:
        raise ConfigError(f"{key} ('{d.name}', data {d.data}): its held-out split '{d.test_split}' is empty")
    return rows


def accuracy(cfg: BTMConfig, d: DomainConfig, model_dir: str, engine) -> float:
    """Held-out accuracy of `engine` (serving the model in `model_dir`) on domain `d`."""
    from envs.prompting import Prompter
    from trainers.grpo.inputs import eval_reward_set
    from trainers.grpo.policy import load_tokenizer
    from trainers.grpo.trainer import evaluate

    g = domain_config(cfg, d, model_dir)
    tok = load_tokenizer(Path(model_dir))
    rows = held_out_rows(cfg, d, f"domains[{cfg.domains.index(d)}]")
    out = evaluate(engine, Prompter.for_data(tok, g.data, model_dir), rows, eval_reward_set(g), g.eval.max_new_tokens)
    return out["eval/accuracy"]


def dev_sequences(cfg: BTMConfig, d: DomainConfig, tok, prompter) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, reference answer ids + EOS) of `ensemble.dev_sequences` train rows of domain `d`."""
    from envs.datasets import load_prompts

    rows = load_prompts(d.data, "train", cfg.ensemble.dev_sequences, cfg.seed, test_split=d.test_split)
    answers = [tok(str(r["answer"]), add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in rows]
    return [prompter.ids(r) for r in rows], answers


def ensemble_prior(cfg: BTMConfig, d: DomainConfig, ens_dir: str, engine) -> list[float]:
    """BTM's prior for domain `d`: the EMA (ensemble.alpha) of the posteriors of its dev sequences."""
    from envs.prompting import Prompter
    from rollout.ensemble_engine import estimate_prior
    from trainers.grpo.policy import load_tokenizer

    g = domain_config(cfg, d, ens_dir)
    tok = load_tokenizer(Path(ens_dir))
    prompts, answers = dev_sequences(cfg, d, tok, Prompter.for_data(tok, g.data, ens_dir))
    return estimate_prior(engine.sequence_loglik(prompts, answers), cfg.ensemble.alpha).tolist()


def evaluate_table(cfg: BTMConfig, models: dict[str, str], ensemble_dir: str | None) -> tuple[list[dict], dict]:
    """Rows `{model, <domain>..., avg}` (experts also `ood`: the mean over the other domains) for every model
    directory in `models` (label -> directory) and the ensemble; and the priors the ensemble used per domain."""
    from rollout.engine import make_engine
    from rollout.ensemble_engine import EnsembleEngine, EnsembleOptions

    names = [d.name for d in cfg.domains]
    rows, priors = [], {}
    for label, path in models.items():
        engine = make_engine("hf", path, seed=cfg.seed)
        try:
            row = {"model": label, **{d.name: accuracy(cfg, d, path, engine) for d in cfg.domains}}
        finally:
            engine.close()
        rows.append(row)
    if ensemble_dir is not None:
        row = {"model": "ensemble"}
        for d in cfg.domains:
            est = EnsembleEngine(ensemble_dir, seed=cfg.seed, options=EnsembleOptions(top_k=cfg.ensemble.top_k))
            priors[d.name] = ensemble_prior(cfg, d, ensemble_dir, est)
            engine = EnsembleEngine(ensemble_dir, seed=cfg.seed,
                                    options=EnsembleOptions(top_k=cfg.ensemble.top_k, prior=priors[d.name]))
            row[d.name] = accuracy(cfg, d, ensemble_dir, engine)
        rows.append(row)
    for row in rows:
        row["avg"] = sum(row[n] for n in names) / len(names)
        if row["model"].startswith("expert:"):
            own = row["model"].split(":", 1)[1]
            others = [row[n] for n in names if n != own]
            row["in_domain"], row["ood"] = row[own], sum(others) / len(others)
    return rows, priors


def table_markdown(rows: list[dict], names: list[str]) -> str:
    from rl.bench.common import markdown_table

    cols = ["model", *names, "avg", "in_domain", "ood"]
    return markdown_table([{k: r.get(k) for k in cols} for r in rows], cols)


def headline(rows: list[dict]) -> dict:
    """The issue's comparison: the best merge or the ensemble against the dense baseline, on the average."""
    cands = [r for r in rows if r["model"].startswith("merge:") or r["model"] == "ensemble"]
    dense = next((r for r in rows if r["model"] == "dense"), None)
    seed = next((r for r in rows if r["model"] == "seed"), None)
    out: dict = {}
    if cands:
        best = max(cands, key=lambda r: r["avg"])
        out.update(best_combined=best["model"], best_combined_avg=best["avg"])
        if dense is not None:
            out.update(dense_avg=dense["avg"], best_minus_dense=best["avg"] - dense["avg"])
    if seed is not None:
        out["seed_avg"] = seed["avg"]
    return out


def write_table(path: Path, rows: list[dict], names: list[str], extra: dict) -> None:
    from rl.rundir import atomic_write_text

    atomic_write_text(path / "table.md", "# Branch-train-merge: held-out accuracy\n\n" + table_markdown(rows, names)
                      + "\n" + "\n".join(f"- {k}: {v}" for k, v in extra.items()) + "\n")
    atomic_write_text(path / "table.json", json.dumps({"rows": rows, **extra}, indent=2))
