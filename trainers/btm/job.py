"""The `btm` job: Branch-Train-Merge (Li et al. 2022; hadasah/btm) with GRPO experts, read top to bottom.

    seed (zoo `tiny-mix` or any HF directory)
      -> branch: one expert per domain, each starting from the seed (or, with branch.from_experts, from the
         average of existing experts weighted by the new domain's posterior over them)
      -> train: every expert an ordinary `grpo` run on its domain, concurrently as Ray tasks (trainers/btm/experts.py),
         plus the compute-matched dense baseline: one grpo run on the mixture of the domains with K x the updates
      -> merge: each `merge.methods` entry through `rl merge` (mergekit) into <run_dir>/merged/<method>
      -> ensemble: BTM's posterior-weighted mixture of the experts (the `btm_ensemble` engine), <run_dir>/ensemble
      -> evaluate: held-out accuracy per domain and on average for all of them (trainers/btm/evaluate.py)

Run directory:
```
<run_dir>/config.yaml, metrics.jsonl, tb/, summary.json (with the table), table.md, table.json
<run_dir>/experts/<domain>/     a complete grpo run directory each (expert.yaml, checkpoints/, summary.json, train.log)
<run_dir>/dense/                the dense baseline's grpo run directory (and its mixture data under dense/data/)
<run_dir>/merged/<method>/      merged HF model directories (merge.json records the method)
<run_dir>/ensemble/             the ensemble directory (ensemble.json: experts, per-domain priors)
<run_dir>/checkpoints/step-N/   the BTM job's own phase record (btm_state.json): 0 planned, 1 trained, 2 evaluated
```
`rl train --resume <run_dir>` continues only the expert and dense runs without summary.json (each from its own last
checkpoint), keeps merges already written, and re-evaluates.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import yaml

from rl.jobkit import checkpoint, start
from rl.jobs import Job
from rl.rundir import RunDir, atomic_write_text
from rl.zoo import resolve_model_path
from trainers.btm.config import BTMConfig, deep_merge, expert_tree
from trainers.btm.experts import ExpertRun, train_all

log = logging.getLogger("orchard")
STATE_FILE = "btm_state.json"


# --- branch ------------------------------------------------------------------------------------------------------
def write_recipe(path: Path, tree: dict) -> Path:
    atomic_write_text(path, yaml.safe_dump(tree, sort_keys=False))
    return path


def dense_data(cfg: BTMConfig, out: Path) -> dict[str, str]:
    """The dense baseline's data: every domain's training prompts (domains[i].train_size each) in one seeded
    shuffled file, and their held-out rows in another (split files `{train: ..., test: ...}`)."""
    from envs.datasets import load_prompts

    train, test = [], []
    for d in cfg.domains:
        train += [{**r, "domain": d.name} for r in load_prompts(d.data, "train", d.train_size, cfg.seed,
                                                                 test_split=d.test_split)]
        test += [{**r, "domain": d.name} for r in load_prompts(d.data, "test", cfg.eval_size, 0, test_split=d.test_split)]
    order = np.random.default_rng([cfg.seed, 53]).permutation(len(train))
    out.mkdir(parents=True, exist_ok=True)
    files = {"train": out / "mix.train.jsonl", "test": out / "mix.test.jsonl"}
    for split, rows in (("train", [train[i] for i in order]), ("test", test)):
        atomic_write_text(files[split], "".join(json.dumps(r) + "\n" for r in rows))
    return {k: str(v) for k, v in files.items()}


def branch_point(cfg: BTMConfig, d, out: Path) -> str:
    """BTM's branching from the forest: the average of `branch.from_experts` weighted by domain `d`'s posterior
    over them (estimated on its dev sequences), written to `out` (kept if already there); returns its directory."""
    from rl.merge import MergeSpec, merge
    from rollout.ensemble_engine import EnsembleEngine, write_ensemble_dir
    from trainers.btm.evaluate import ensemble_prior

    if (out / "merge.json").is_file():
        return str(out)
    experts = [str(resolve_model_path(e, key="branch.from_experts")) for e in cfg.branch.from_experts]
    ens = write_ensemble_dir(out.parent / f"{out.name}-ensemble", experts)
    weights = ensemble_prior(cfg, d, str(ens), EnsembleEngine(str(ens), seed=cfg.seed))
    merge(MergeSpec(method="weighted", experts=tuple(experts), weights=tuple(weights)), out)
    print(f"btm | {d.name:8s} branches from {len(experts)} experts, posterior weights "
          f"{[round(w, 3) for w in weights]}", flush=True)
    return str(out)


def plan(cfg: BTMConfig, run: RunDir, seed_dir: Path) -> list[ExpertRun]:
    """One grpo recipe per domain (and the dense baseline), written into its run directory as expert.yaml."""
    from trainers.grpo.config import GRPOConfig

    runs = []
    for d in cfg.domains:
        rd = run.path / "experts" / d.name
        start_dir = branch_point(cfg, d, run.path / "branch" / d.name) if cfg.branch.from_experts else str(seed_dir)
        tree = expert_tree(cfg, d, start_dir, str(rd))
        steps = GRPOConfig.model_validate(tree).max_steps
        rd.mkdir(parents=True, exist_ok=True)
        runs.append(ExpertRun(d.name, write_recipe(rd / "expert.yaml", tree), rd, steps))
    if cfg.dense:
        rd = run.path / "dense"
        d0 = cfg.domains[0]
        total = sum(r.max_steps for r in runs)  # compute-matched: as many updates (of the same batch) as all experts
        tree = deep_merge(expert_tree(cfg, d0, str(seed_dir), str(rd)), {
            "max_steps": total, "data": {"name": dense_data(cfg, rd / "data"), "test_split": "test",
                                         "train_size": sum(d.train_size for d in cfg.domains),
                                         "eval_size": cfg.eval_size * len(cfg.domains)}})
        runs.append(ExpertRun("dense", write_recipe(rd / "expert.yaml", tree), rd, total))
    return runs


def final_model(run_dir: Path) -> str:
    """The model directory of a finished grpo run's last checkpoint."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return str(Path(summary["final_checkpoint"]) / "model")


def full_model(path: str, seed_dir: Path, out: Path) -> str:
    """`path` itself if it is a full model; for a LoRA expert (`expert.model.lora.enabled`: its checkpoint holds a
    peft adapter), the seed with the adapter merged in (peft, exactly θ_seed + ΔW), for evaluation and the
    ensemble."""
    from rl.merge import MergeSpec, kind_of, merge

    if kind_of(Path(path), "expert checkpoint") == "full":
        return path
    if not (out / "merge.json").is_file():
        merge(MergeSpec(method="task_arithmetic", experts=(path,), base=str(seed_dir), weights=(1.0,)), out)
    return str(out)


# --- merge -------------------------------------------------------------------------------------------------------
def merge_experts(cfg: BTMConfig, run: RunDir, seed_dir: Path, experts: dict[str, str]) -> dict[str, str]:
    """Each `merge.methods` entry into <run_dir>/merged/<method> (kept if already written)."""
    from rl.merge import MergeSpec, merge

    out = {}
    for method in cfg.merge.methods:
        d = run.path / "merged" / method
        if not (d / "merge.json").is_file():
            rec = merge(MergeSpec(method=method, experts=tuple(experts.values()), base=str(seed_dir),
                                  density=cfg.merge.density, lam=cfg.merge.lam, seed=cfg.seed), d)
            print(f"btm | merged {method:16s} ({rec['library']} {rec['library_method']}, {rec['merge_s']:.1f} s)",
                  flush=True)
        out[f"merge:{method}"] = str(d)
    return out


# --- the job -----------------------------------------------------------------------------------------------------
def write_phase(run: RunDir, cfg: BTMConfig, step: int, state: dict) -> None:
    checkpoint(run, step, 2, cfg.checkpoint, lambda d: (d / STATE_FILE).write_text(json.dumps(state, indent=2)),
               force=True)


def train(cfg: BTMConfig, run: RunDir) -> dict:
    from rollout.ensemble_engine import write_ensemble_dir
    from trainers.btm.evaluate import evaluate_table, headline, held_out_rows, write_table

    job = start(run, cfg.seed)
    seed_dir = resolve_model_path(cfg.seed_model, key="seed_model")
    for i, d in enumerate(cfg.domains):  # every domain can be evaluated before anything trains
        held_out_rows(cfg, d, f"domains[{i}]")
    runs = plan(cfg, run, seed_dir)
    state = job.load_state(STATE_FILE)
    if not job.resumed:
        write_phase(run, cfg, 0, {"phase": "planned", "runs": [r.label for r in runs]})
    print(f"btm | seed {seed_dir}; {len(cfg.domains)} experts + {'dense baseline' if cfg.dense else 'no dense'}, "
          f"{cfg.parallel.experts_in_parallel} at a time x {cfg.parallel.cpus_per_expert:g} CPUs", flush=True)
    summaries = train_all(runs, cfg.parallel)
    write_phase(run, cfg, 1, {**state, "phase": "trained", "summaries": summaries})
    trained = {d.name: final_model(run.path / "experts" / d.name) for d in cfg.domains}
    experts = {k: full_model(v, seed_dir, run.path / "experts" / k / "full_model") for k, v in trained.items()}
    models = {"seed": str(seed_dir), **{f"expert:{k}": v for k, v in experts.items()}}
    models.update(merge_experts(cfg, run, seed_dir, trained))  # LoRA experts merge as adapters (peft)
    if cfg.dense:
        models["dense"] = full_model(final_model(run.path / "dense"), seed_dir, run.path / "dense" / "full_model")
    ens_dir = None
    if cfg.ensemble.enabled:
        ens_dir = str(write_ensemble_dir(run.path / "ensemble", list(experts.values()), top_k=cfg.ensemble.top_k,
                                         extra={"domains": list(experts)}))
    rows, priors = evaluate_table(cfg, models, ens_dir)
    if ens_dir is not None:  # the priors each domain's evaluation used, for `rl eval` with the btm_ensemble engine
        spec = json.loads((Path(ens_dir) / "ensemble.json").read_text())
        atomic_write_text(Path(ens_dir) / "ensemble.json", json.dumps({**spec, "priors": priors}, indent=2))
    names = [d.name for d in cfg.domains]
    head = headline(rows)
    write_table(run.path, rows, names, head)
    run.log_metrics(1, {f"table/{r['model']}/{k}": r[k] for r in rows for k in (*names, "avg")},
                    tensorboard=cfg.log.tensorboard)
    run.close()
    print((run.path / "table.md").read_text(), flush=True)
    write_phase(run, cfg, 2, {"phase": "evaluated", "table": rows})
    wall = {k: v.get("wall_time_s") for k, v in summaries.items()}
    return {"algo": "btm", "domains": names, "seed_model": str(seed_dir), "table": rows, **head,
            "ensemble_priors": priors, "experts": {k: str(run.path / "experts" / k) for k in experts},
            "run_wall_time_s": wall, "wall_time_s": time.time() - job.t0,
            "final_checkpoint": str(run.latest_checkpoint()[1])}


JOB = Job("btm", BTMConfig, train, "Branch-train-merge: GRPO domain experts in parallel (Ray), merged (mergekit) and "
                                   "ensembled, against a compute-matched dense baseline")
