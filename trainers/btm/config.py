"""The `btm` job's config: branch-train-merge over GRPO experts. Typed defaults; `configs/btm_tiny.yaml` overrides.

A domain is any dataset + reward pair (`domains[i].data`, `domains[i].reward`) with a held-out split. `expert` holds
GRPO overrides (the `grpo` job's keys: max_steps, rollout.*, trainer.*, ...) shared by every expert and by the
dense baseline; the BTM job sets their model (the seed), data, reward and run directory itself.
"""
from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from rl.config import JobConfig, Section, format_validation_error
from rl.merge import METHODS
from rl.registry import did_you_mean

RESERVED = {"algo": "set to grpo", "run_dir": "each expert's is <run_dir>/experts/<domain>",
            "reward": "domains[i].reward", "seed": "the BTM job's seed"}
RESERVED_SUB = {("model", "path"): "seed_model (or the branch average)", ("data", "name"): "domains[i].data",
                ("data", "test_split"): "domains[i].test_split", ("data", "train_size"): "domains[i].train_size",
                ("data", "eval_size"): "eval_size", ("eval", "reward"): "domains[i].reward"}


class DomainConfig(Section):
    name: str
    """The domain's label (its expert's directory name: <run_dir>/experts/<name>)."""
    data: str | dict[str, str]
    """The domain's prompts: a registered dataset (`arithmetic`, `subtraction`, `multiplication`, ...), a dataset
    file, or a mapping of split files, as GRPO's `data.name`. It must have a held-out split."""
    reward: str = "exact_match"
    """The domain's reward (a registered name, `file.py:fn` or `pkg.mod:fn`): trains its expert and, as `eval.reward`,
    scores every model's held-out accuracy on the domain."""
    test_split: str | float = "test"
    """The held-out split (as GRPO's `data.test_split`)."""
    train_size: int = Field(512, ge=1)
    """Training prompts of the domain (its expert's `data.train_size`; the dense baseline takes this many of each)."""

    @field_validator("name")
    @classmethod
    def _dir_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"domain name {v!r} must be a plain directory name")
        return v


class ParallelConfig(Section):
    experts_in_parallel: int = Field(2, ge=1)
    """How many experts (and the dense baseline) train at the same time, each a Ray task."""
    cpus_per_expert: float = Field(1.0, gt=0)
    """Ray CPUs each expert task reserves; also its torch thread count (rounded, at least 1)."""
    gpus_per_expert: float = Field(0.0, ge=0)
    """Ray GPUs each expert task reserves (fractions share a GPU)."""
    expert_retries: int = Field(1, ge=0)
    """How often Ray reruns an expert whose process died (it resumes from its own last checkpoint)."""
    address: str | None = None
    """Join an existing Ray cluster ('auto' or 'host:port') instead of starting a local one."""


class MergeConfig(Section):
    methods: list[str] = ["linear", "task_arithmetic", "ties", "dare"]
    """Merges of the experts into one model, each a method of `rl.merge.METHODS` (`weighted` with its default
    weights, 1/K each, equals `linear`)."""
    density: float = Field(0.5, gt=0, le=1)
    """ties / dare: the fraction of each task vector kept."""
    lam: float = Field(1.0, gt=0)
    """Task-vector methods: the scale λ of the merged task vector."""

    @field_validator("methods")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in METHODS:
                raise ValueError(f"unknown merge method '{m}'{did_you_mean(m, METHODS)}; known: {', '.join(METHODS)}")
        return v


class EnsembleConfig(Section):
    enabled: bool = True
    """Evaluate BTM's ensemble (the `btm_ensemble` engine) beside the merges."""
    top_k: int | None = Field(None, ge=1)
    """Mix only the k experts with the largest posterior at each token (None: all)."""
    dev_sequences: int = Field(16, ge=1)
    """Dev sequences (train-split prompts with their reference answers) of each domain the prior is estimated on
    before that domain's evaluation (BTM: 100)."""
    alpha: float = Field(0.3, gt=0, le=1)
    """EMA rate of the prior estimate (BTM: 0.3)."""


class BranchConfig(Section):
    from_experts: list[str] = []
    """Branch from the forest (BTM): HF directories of existing experts. When set, each new domain's expert starts
    from Σ_j w_j θ_j of these, with w the new domain's posterior over them (the EMA prior of `ensemble.alpha` over
    `ensemble.dev_sequences` of its training prompts with their answers), instead of from `seed_model`."""


class BTMConfig(JobConfig):
    algo: Literal["btm"] = "btm"
    """Which job to run."""
    seed_model: str = "tiny-mix"
    """The seed every expert branches from: a zoo model (`tiny-mix`: partly competent on addition, subtraction and
    multiplication) or a local HF model directory."""
    domains: list[DomainConfig] = [DomainConfig(name="add", data="arithmetic"),
                                   DomainConfig(name="sub", data="subtraction"),
                                   DomainConfig(name="mul", data="multiplication")]
    """The task domains: one expert each."""
    expert: dict = {}
    """GRPO overrides for every expert and the dense baseline (`rl train --help-config` of a grpo recipe lists the
    keys); model.path, data.name/test_split/train_size/eval_size, reward and eval.reward come from the BTM config."""
    branch: BranchConfig = BranchConfig()
    """Where each expert starts: the seed (default) or a posterior-weighted average of existing experts."""
    parallel: ParallelConfig = ParallelConfig()
    """How the experts run concurrently."""
    merge: MergeConfig = MergeConfig()
    """Parameter merges of the experts."""
    ensemble: EnsembleConfig = EnsembleConfig()
    """The output ensemble."""
    dense: bool = True
    """Train the compute-matched dense baseline: one GRPO run on the mixture of the domains' training prompts with
    as many updates as all experts together (K x expert max_steps, the same batch)."""
    eval_size: int = Field(100, ge=1)
    """Held-out problems per domain in the evaluation table."""

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[DomainConfig]) -> list[DomainConfig]:
        if len(v) < 2:
            raise ValueError(f"branch-train-merge needs at least 2 domains, got {len(v)}")
        names = [d.name for d in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"domain names must be unique: {', '.join(dup)} repeated")
        return v

    @model_validator(mode="after")
    def _expert_overrides(self):
        """The shared GRPO overrides leave the keys BTM sets alone, and every expert's GRPO config validates."""
        for key, why in RESERVED.items():
            if key in self.expert:
                raise ValueError(f"expert.{key}: set by the BTM job ({why}); remove it from `expert`")
        for (sec, key), why in RESERVED_SUB.items():
            if isinstance(self.expert.get(sec), dict) and key in self.expert[sec]:
                raise ValueError(f"expert.{sec}.{key}: set by the BTM job (from {why}); remove it from `expert`")
        rewards = sorted({d.reward for d in self.domains})
        if self.dense and len(rewards) > 1:
            raise ValueError(f"dense: the domains' rewards differ ({', '.join(rewards)}) but the dense baseline is one "
                             f"GRPO run with one reward; use one reward for every domain or set dense=false")
        from trainers.grpo.config import GRPOConfig

        for i, d in enumerate(self.domains):
            tree = expert_tree(self, d, model_path="tiny-mix", run_dir="unused")
            try:
                GRPOConfig.model_validate(tree)
            except ValidationError as e:
                lines = format_validation_error(GRPOConfig, e).splitlines()[1:]
                raise ValueError(f"the GRPO config of domain '{d.name}' (domains[{i}] + expert) is invalid: "
                                 + "; ".join("expert." + ln.strip() for ln in lines)) from None
        return self


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


EXPERT_DEFAULTS = {"cluster": {"backend": "local"}, "log": {"progress": False}}
"""What BTM's experts run with unless `expert` says otherwise: each in its own Ray task with an in-process rollout
worker (cluster.backend=local), no live progress bar (the BTM job prints one line per expert)."""


def expert_tree(cfg: BTMConfig, d: DomainConfig, model_path: str, run_dir: str) -> dict:
    """The GRPO config (as a YAML tree) of domain `d`'s expert."""
    tree = deep_merge(EXPERT_DEFAULTS, cfg.expert)
    return deep_merge(tree, {
        "algo": "grpo", "seed": cfg.seed, "run_dir": run_dir, "model": {"path": model_path},
        "data": {"name": d.data, "test_split": d.test_split, "train_size": d.train_size, "eval_size": cfg.eval_size},
        "reward": [{"fn": d.reward}], "eval": {"reward": d.reward}})
