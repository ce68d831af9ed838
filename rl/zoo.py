"""Model zoo: tiny models the project builds itself (no hub downloads), in Hugging Face format.

Every model here is a Llama-architecture causal LM with a character-level tokenizer, saved with
`save_pretrained` so both transformers and vLLM load it. Heads are 64 wide (vLLM's CPU attention needs
head_dim 64). `resolve_model_path` turns a zoo name or a local HF directory into a directory on disk,
building and caching zoo models on first use.

This module holds the registry, the cache and the random-init models. Models whose recipe trains (the default
policy `tiny-arith`: trainers/sft/tiny_arith.py) live above rl core and register themselves; `MODEL_PROVIDERS`
names their modules.
"""
from __future__ import annotations

import hashlib
import json
import os
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from rl.errors import ConfigError, OrchardError
from rl.registry import Registry, did_you_mean

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
CHARS = string.digits + string.ascii_letters + string.punctuation + " \n"


def build_tokenizer():
    """A character-level fast tokenizer (BPE with no merges), with pad/bos/eos/unk special tokens."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK, *CHARS])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, padding_side="left", clean_up_tokenization_spaces=False)


@dataclass(frozen=True)
class ArchSpec:
    hidden: int
    layers: int
    heads: int  # head_dim = hidden // heads = 64 always
    intermediate: int
    max_positions: int = 256


def llama_config(arch: ArchSpec, tokenizer):
    from transformers import LlamaConfig

    assert arch.hidden // arch.heads == 64, "vLLM CPU attention needs head_dim 64"
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch.hidden, intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers, num_attention_heads=arch.heads, num_key_value_heads=arch.heads,
        max_position_embeddings=arch.max_positions, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32",
    )


def init_random_model(arch: ArchSpec, tokenizer, seed: int = 0):
    """A randomly initialised LlamaForCausalLM (fp32), reproducible from `seed`."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(arch, tokenizer))


# Sizes used by benchmarks and tests (parameter counts include the tied embedding).
ARCHS: dict[str, ArchSpec] = {
    "3m": ArchSpec(hidden=256, layers=4, heads=4, intermediate=512),
    "30m": ArchSpec(hidden=512, layers=8, heads=8, intermediate=1536),
    "100m": ArchSpec(hidden=768, layers=12, heads=12, intermediate=2304),
}

@dataclass(frozen=True)
class ZooModel:
    """A buildable model: `build(out_dir, seed) -> dict | None` writes an HF model directory and returns its build
    record. `recipe` holds everything the result depends on (bump its `version` when the builder's code changes what
    it builds): its hash is part of the cache key, so a changed recipe builds a new model instead of reusing a stale
    one. `check(out_dir, seed, record) -> dict`, if given, measures the built model, returns the figures to add to
    the record, and raises ZooBuildError when it is outside its stated band. `build()` writes the record once, as
    the model directory's zoo.json."""

    build: Callable[[Path, int], dict | None]
    recipe: dict
    check: Callable[[Path, int, dict], dict] | None = None

    @property
    def recipe_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.recipe, sort_keys=True).encode()).hexdigest()[:10]


class ZooBuildError(OrchardError):
    """A zoo model built, but its measured quality is outside the band its recipe promises (nothing was cached)."""


MODEL_PROVIDERS = ("trainers.sft.tiny_arith", "trainers.sft.tiny_expr", "rl.zoo_chat", "trainers.sft.tiny_agent",
                   "trainers.sft.tiny_mix", "trainers.sft.tiny_mdlm", "trainers.sft.tiny_guesser")
"""Modules above rl core that register zoo models when imported (tiny-arith: trainers/sft/tiny_arith.py). The
registry imports them the first time it is read, so `rl models`, `rl train` (model.path: tiny-arith) and
`resolve_model_path` see their models while this module imports neither trainers/ nor envs/."""

MODELS: Registry[ZooModel] = Registry("model", providers=MODEL_PROVIDERS)


def cache_root() -> Path:
    return Path(os.environ.get("ORCHARD_CACHE", Path.home() / ".cache" / "orchard")) / "models"


def cache_dir(name: str, seed: int = 0) -> Path:
    """Where zoo model `name` built with `seed` is cached: the recipe's hash is part of the key."""
    return cache_root() / f"{name}-seed{seed}-{MODELS.get(name).recipe_hash}"


def save_random(arch: ArchSpec, out_dir: Path, seed: int) -> None:
    tok = build_tokenizer()
    model = init_random_model(arch, tok, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


for _size, _arch in ARCHS.items():
    MODELS.register(f"random-{_size}")(ZooModel(
        build=lambda out_dir, seed, _arch=_arch: save_random(_arch, out_dir, seed),
        recipe={"kind": "random", "arch": asdict(_arch), "version": 1}))


def describe(path: Path) -> dict:
    """Parameter count, architecture and the zoo.json build record (if any) of a model directory."""
    from safetensors import safe_open

    import math as _math

    path = Path(path)
    n = 0
    for f in path.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            n += sum(_math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    cfg = json.loads((path / "config.json").read_text())
    out = {"path": str(path), "params": n, "architecture": (cfg.get("architectures") or ["?"])[0],
           "hidden_size": cfg.get("hidden_size"), "layers": cfg.get("num_hidden_layers")}
    if (path / "zoo.json").exists():
        out["zoo"] = json.loads((path / "zoo.json").read_text())
    return out


def is_hf_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def build(name: str, seed: int = 0, force: bool = False) -> Path:
    """Build zoo model `name` into the cache (atomically) unless it is there already; return its directory. A model
    whose check fails (ZooBuildError) is not cached, and nothing already cached is touched."""
    import shutil

    spec = MODELS.get(name)
    out = cache_dir(name, seed)
    if is_hf_model_dir(out) and not force:
        return out
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        record = {"name": name, "seed": seed, **(spec.build(tmp, seed) or {}), "recipe": spec.recipe,
                  "recipe_hash": spec.recipe_hash}
        if spec.check is not None:
            record.update(spec.check(tmp, seed, record))
        (tmp / "zoo.json").write_text(json.dumps(record, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model_path(path_or_name: str, seed: int = 0, key: str = "model.path") -> Path:
    """A local HF model directory as-is, or a zoo model name (built and cached on first use)."""
    p = Path(path_or_name).expanduser()
    if p.exists():
        if not is_hf_model_dir(p):
            raise ConfigError(f"{key}: '{p}' exists but is not a Hugging Face model directory (no config.json)")
        return p
    if path_or_name in MODELS:
        return build(path_or_name, seed=seed)
    raise ConfigError(
        f"{key}: '{path_or_name}' is neither a local model directory nor a zoo model"
        f"{did_you_mean(path_or_name, MODELS.names())}; zoo models: {', '.join(MODELS.names())}"
    )

