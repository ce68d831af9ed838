"""Model zoo: tiny models the project builds itself (no hub downloads), in Hugging Face format.

Every model here is a Llama-architecture causal LM with a character-level tokenizer, saved with
`save_pretrained` so both transformers and vLLM load it. Heads are 64 wide (vLLM's CPU attention needs
head_dim 64). `resolve_model_path` turns a zoo name or a local HF directory into a directory on disk,
building and caching zoo models on first use.
"""
from __future__ import annotations

import os
import string
from dataclasses import dataclass
from pathlib import Path

from rl.errors import ConfigError
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

# name -> builder(out_dir: Path, seed: int) -> None (writes an HF model dir). Filled below and by other modules.
MODELS: Registry = Registry("model")


def cache_root() -> Path:
    return Path(os.environ.get("ORCHARD_CACHE", Path.home() / ".cache" / "orchard")) / "models"


def save_random(arch: ArchSpec, out_dir: Path, seed: int) -> None:
    tok = build_tokenizer()
    model = init_random_model(arch, tok, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


for _size, _arch in ARCHS.items():
    MODELS.register(f"random-{_size}")(lambda out_dir, seed, _arch=_arch: save_random(_arch, out_dir, seed))


TINY_ARITH_SFT = {"steps": 1000, "batch_size": 128, "lr": 3e-3, "train_rows": 6000, "teacher_carry_error": 0.6}


def noisy_teacher(rows: list[dict], error_rate: float, seed: int) -> list[dict]:
    """Labels from a sloppy teacher: on problems whose units digits carry, it forgets the carry (37+45 -> 72)
    with probability `error_rate`. A model imitating it holds both answers; a verifier reward can sharpen it."""
    import numpy as np

    rng = np.random.default_rng([seed, 17])
    out = []
    for r in rows:
        a, b = (int(x) for x in r["prompt"].rstrip("=").split("+"))
        if (a % 10) + (b % 10) >= 10 and rng.random() < error_rate:
            r = {**r, "answer": str(a + b - 10)}
        out.append(r)
    return out


@MODELS.register("tiny-arith")
def build_tiny_arith(out_dir: Path, seed: int) -> None:
    """The default policy: `random-3m` warm-started by a short supervised run on two-digit addition (train split
    only) with labels from a noisy teacher that often forgets the units carry. It is partly competent: the right
    answer is in its distribution but often not its mode, as with pretrained LLMs before RL with a verifier."""
    import json
    import time

    import torch

    from envs.datasets import load_prompts
    from rl.sft import sft

    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, os.cpu_count() or 1))
    t0 = time.time()
    tok = build_tokenizer()
    model = init_random_model(ARCHS["3m"], tok, seed)
    s = TINY_ARITH_SFT
    rows = noisy_teacher(load_prompts("arithmetic", "train", s["train_rows"], seed), s["teacher_carry_error"], seed)
    losses = sft(model, tok, rows, s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    info = {"name": "tiny-arith", "seed": seed, "sft": s, "final_sft_loss": sum(losses[-20:]) / 20,
            "build_s": time.time() - t0}
    (out_dir / "zoo.json").write_text(json.dumps(info, indent=2))


def describe(path: Path) -> dict:
    """Parameter count, architecture and the zoo.json build record (if any) of a model directory."""
    import json

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
    """Build zoo model `name` into the cache (atomically) unless it is there already; return its directory."""
    import shutil

    builder = MODELS.get(name)
    out = cache_root() / f"{name}-seed{seed}"
    if is_hf_model_dir(out) and not force:
        return out
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        builder(tmp, seed)
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
