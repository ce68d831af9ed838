"""`rl merge`: one model from several fine-tuned ones, through mergekit (full checkpoints) or peft (LoRA adapters).

Methods and the formula each produces (τ_i = θ_i − θ_base, the expert's task vector; w_i its weight):

| method | formula | base |
|---|---|---|
| `linear` | θ = Σ_i θ_i / K (uniform parameter average, BTM's "average") | not used |
| `weighted` | θ = Σ_i w_i θ_i / Σ_i w_i (e.g. BTM's posterior-weighted average) | not used |
| `task_arithmetic` | θ = θ_base + λ Σ_i w_i τ_i | required |
| `ties` | τ_i trimmed to its top `density` fraction by magnitude; per element the sign of Σ_i w_i τ_i elects; θ = θ_base + λ Σ_i w_i τ_i m_i / Σ_i w_i m_i over the agreeing entries m_i | required |
| `dare` | τ_i ⊙ Bernoulli(density) mask, rescaled to τ_i's L1 norm; θ = θ_base + λ Σ_i w_i τ̃_i (mergekit `dare_linear`) | required |
| `dare_ties` | DARE's sparsified τ̃_i, then TIES's sign election and disjoint sum (mergekit `dare_ties`, not normalised) | required |

Full checkpoints (HF directories with config.json and safetensors) go through mergekit's Python API
(`MergeConfiguration` + `run_merge`, mergekit/merge_methods/generalized_task_arithmetic.py). LoRA experts (peft adapter
directories, adapter_config.json) go through peft's `add_weighted_adapter` on the base model, then
`merge_and_unload`: `linear`/`weighted`/`task_arithmetic` use peft's `cat` combination, which is exactly
Σ_i w_i ΔW_i (peft's own `linear` merges A and B separately and adds cross terms); `ties`, `dare` (`dare_linear`) and
`dare_ties` are peft's, applied to A and B separately with weights √w_i (their documented behaviour; they need equal
ranks). `tests/rl/test_merge.py` checks each method against its formula on tiny models.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rl.errors import OrchardError

METHODS = ("linear", "weighted", "task_arithmetic", "ties", "dare", "dare_ties")
NEEDS_BASE = ("task_arithmetic", "ties", "dare", "dare_ties")
_MERGEKIT = {"linear": "linear", "weighted": "linear", "task_arithmetic": "task_arithmetic", "ties": "ties",
             "dare": "dare_linear", "dare_ties": "dare_ties"}
_PEFT = {"linear": "cat", "weighted": "cat", "task_arithmetic": "cat", "ties": "ties", "dare": "dare_linear",
         "dare_ties": "dare_ties"}
ARCH_KEYS = ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "vocab_size", "tie_word_embeddings")
"""config.json fields that must agree for parameters to be merged element by element."""


class MergeError(OrchardError):
    """A merge that cannot run as asked (its message names the directory or option at fault)."""


@dataclass(frozen=True)
class MergeSpec:
    method: str
    experts: tuple[str, ...]
    base: str | None = None
    weights: tuple[float, ...] | None = None
    """One per expert; None: 1/K each for linear, 1.0 each for the task-vector methods."""
    density: float = 0.5
    """ties / dare / dare_ties: the fraction of each task vector kept."""
    lam: float = 1.0
    """task-vector methods: λ, the scale of the merged task vector."""
    seed: int = 0
    """dare / dare_ties: seeds the random drop masks."""


def _config(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())


def kind_of(d: Path, what: str) -> str:
    """'full' (an HF model directory) or 'lora' (a peft adapter directory); MergeError naming `d` otherwise."""
    if not d.is_dir():
        raise MergeError(f"{what} {d}: no such directory")
    if (d / "adapter_config.json").is_file():
        return "lora"
    if (d / "config.json").is_file() and any(d.glob("*.safetensors")):
        return "full"
    raise MergeError(f"{what} {d} is neither a Hugging Face model directory (config.json + *.safetensors) nor a peft "
                     f"LoRA adapter directory (adapter_config.json)")


def check_spec(spec: MergeSpec) -> str:
    """Validate `spec` before anything loads; returns the experts' kind ('full' or 'lora')."""
    if spec.method not in METHODS:
        from rl.registry import did_you_mean

        raise MergeError(f"--method {spec.method}: unknown merge method{did_you_mean(spec.method, METHODS)}; "
                         f"known: {', '.join(METHODS)}")
    if len(spec.experts) < 1:
        raise MergeError("give at least one EXPERT_DIR to merge")
    if spec.method in NEEDS_BASE and spec.base is None:
        raise MergeError(f"--method {spec.method} merges task vectors θ_i − θ_base and needs --base SEED_DIR (the "
                         f"model the experts were fine-tuned from); linear and weighted need no base")
    if spec.weights is not None and len(spec.weights) != len(spec.experts):
        raise MergeError(f"--weights: {len(spec.weights)} weights for {len(spec.experts)} experts (one per EXPERT_DIR)")
    if spec.weights is not None and spec.method in ("linear", "weighted") and sum(spec.weights) <= 0:
        raise MergeError(f"--weights {list(spec.weights)}: an average needs weights with a positive sum")
    if not 0 < spec.density <= 1:
        raise MergeError(f"--density {spec.density}: must lie in (0, 1]")
    kinds = {str(e): kind_of(Path(e), "EXPERT_DIR") for e in spec.experts}
    if len(set(kinds.values())) > 1:
        raise MergeError(f"experts mix full checkpoints and LoRA adapters: {kinds}")
    kind = next(iter(kinds.values()))
    if spec.base is not None:
        if kind_of(Path(spec.base), "--base") != "full":
            raise MergeError(f"--base {spec.base} must be a full Hugging Face model directory")
    if kind == "lora" and spec.base is None:
        raise MergeError("LoRA experts are merged on the model they adapt: give --base SEED_DIR")
    ref_dir = Path(spec.base) if spec.base is not None else Path(spec.experts[0])
    if kind == "full":
        ref = {k: _config(ref_dir).get(k) for k in ARCH_KEYS}
        for e in spec.experts:
            got = {k: _config(Path(e)).get(k) for k in ARCH_KEYS}
            diff = {k: (ref[k], got[k]) for k in ARCH_KEYS if ref[k] != got[k]}
            if diff:
                raise MergeError(f"EXPERT_DIR {e}: its architecture differs from {ref_dir} "
                                 f"({', '.join(f'{k}: {a!r} vs {b!r}' for k, (a, b) in diff.items())}); only models "
                                 f"of one architecture can be merged parameter by parameter")
    return kind


def default_weights(spec: MergeSpec) -> list[float]:
    if spec.weights is not None:
        return list(spec.weights)
    k = len(spec.experts)
    return [1.0 / k] * k if spec.method in ("linear", "weighted") else [1.0] * k


def mergekit_config(spec: MergeSpec) -> dict:
    """The mergekit YAML (as a dict) that produces `spec`'s formula."""
    weights = default_weights(spec)
    params = {}
    if spec.method in ("ties", "dare", "dare_ties"):
        params["density"] = spec.density
    models = [{"model": str(Path(e).resolve()), "parameters": {"weight": w, **params}}
              for e, w in zip(spec.experts, weights)]
    cfg: dict = {"merge_method": _MERGEKIT[spec.method], "models": models, "dtype": "float32"}
    if spec.method in ("linear", "weighted"):
        cfg["parameters"] = {"normalize": True}
    else:
        cfg["base_model"] = str(Path(spec.base).resolve())
        cfg["parameters"] = {"lambda": spec.lam, "normalize": spec.method == "ties"}
    return cfg


def merge_full(spec: MergeSpec, out: Path) -> None:
    import torch
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    cfg = MergeConfiguration.model_validate(mergekit_config(spec))
    threads = torch.get_num_threads()
    try:
        run_merge(cfg, str(out), options=MergeOptions(cuda=False, copy_tokenizer=True, random_seed=spec.seed,
                                                      quiet=True, write_model_card=False, lazy_unpickle=False))
    finally:
        torch.set_num_threads(threads)  # MergeOptions may set threads; leave the caller's setting as it was


def merge_lora(spec: MergeSpec, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = default_weights(spec)
    if spec.method in ("linear", "weighted"):
        weights = [w / sum(weights) for w in weights]
    if spec.method == "task_arithmetic":
        weights = [spec.lam * w for w in weights]
    torch.manual_seed(spec.seed)
    base = AutoModelForCausalLM.from_pretrained(spec.base, dtype=torch.float32)
    names = [f"expert{i}" for i in range(len(spec.experts))]  # not "a"/"b": they clash with peft's lora_ prefix
    model = PeftModel.from_pretrained(base, spec.experts[0], adapter_name=names[0])
    for name, d in zip(names[1:], spec.experts[1:]):
        model.load_adapter(d, adapter_name=name)
    kwargs = {"density": spec.density} if spec.method in ("ties", "dare", "dare_ties") else {}
    try:
        model.add_weighted_adapter(names, weights, "merged", combination_type=_PEFT[spec.method], **kwargs)
    except ValueError as e:
        raise MergeError(f"peft add_weighted_adapter ({_PEFT[spec.method]}) refused the adapters in "
                         f"{list(spec.experts)}: {e}") from None
    model.set_adapter("merged")
    for name in names:
        model.delete_adapter(name)
    merged = model.merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(spec.base).save_pretrained(out)


def merge(spec: MergeSpec, out: str | Path) -> dict:
    """Merge `spec.experts` into the HF model directory `out` (written to a temp directory, then renamed); returns
    a record of what ran, also written as `out/merge.json`."""
    import os
    import shutil

    kind = check_spec(spec)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"--out {out} exists and is not empty; choose a new directory")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        (merge_full if kind == "full" else merge_lora)(spec, tmp)
        record = {"method": spec.method, "kind": kind, "library": "mergekit" if kind == "full" else "peft",
                  "library_method": (_MERGEKIT if kind == "full" else _PEFT)[spec.method],
                  "experts": [str(e) for e in spec.experts], "base": spec.base, "weights": default_weights(spec),
                  "density": spec.density, "lambda": spec.lam, "seed": spec.seed, "merge_s": time.time() - t0}
        (tmp / "merge.json").write_text(json.dumps(record, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record
