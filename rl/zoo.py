"""Model zoo: tiny models the project builds itself (no hub downloads), in Hugging Face format.

Every model here is a Llama-architecture causal LM with a character-level tokenizer, saved with
`save_pretrained` so both transformers and vLLM load it. Heads are 64 wide (vLLM's CPU attention needs
head_dim 64). `resolve_model_path` turns a zoo name or a local HF directory into a directory on disk,
building and caching zoo models on first use.
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


MODELS: Registry[ZooModel] = Registry("model")


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


# The default policy's warm start (see build_tiny_arith). Measured over seeds 0-2 from empty caches (README).
TINY_ARITH_SFT = {"max_steps": 3000, "batch_size": 128, "lr": 1e-3, "warmup": 100, "stop_below": 0.2,
                  "cooldown": 300, "train_rows": 6000, "teacher_carry_error": 0.6}
TINY_ARITH_BAND = {"greedy_min": 0.40, "greedy_max": 0.85, "pass_at_k_min": 0.85, "k": 8, "problems": 300}
"""The regime RL needs: partly competent (greedy accuracy well above chance but short of the ceiling) with the
right answer usually somewhere in the sampled distribution (pass@k at temperature 1)."""


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


def build_tiny_arith(out_dir: Path, seed: int) -> dict:
    """The default policy: `random-3m` warm-started by a short supervised run on two-digit addition (train split
    only) with labels from a noisy teacher that often forgets the units carry. It is partly competent: the right
    answer is in its distribution but often not its mode, as with pretrained LLMs before RL with a verifier."""
    import time

    import torch

    from envs.datasets import load_prompts
    from rl.sft import sft

    # One thread: the same float rounding on every machine whatever its core count (a 2.6M model gains little from
    # more threads here), and no OpenMP oversubscription slowdown when something else is running.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.time()
    tok = build_tokenizer()
    model = init_random_model(ARCHS["3m"], tok, seed)
    s = TINY_ARITH_SFT
    rows = noisy_teacher(load_prompts("arithmetic", "train", s["train_rows"], seed), s["teacher_carry_error"], seed)
    try:
        losses = sft(model, tok, rows, s["max_steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
                     warmup=s["warmup"], stop_below=s["stop_below"], cooldown=s["cooldown"])
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return {"sft_steps": len(losses), "final_sft_loss": sum(losses[-20:]) / 20, "build_s": time.time() - t0,
            "torch_threads": 1}


def held_out_quality(model_dir: Path, dataset: str, problems: int, k: int, max_new_tokens: int = 16) -> dict:
    """Greedy accuracy, pass@k and per-sample accuracy (temperature 1, fixed seed) on a dataset's test split (the
    same problems the GRPO recipes evaluate on), scored by exact match."""
    from envs.datasets import load_prompts
    from rewards.builtin import exact_match
    from rollout.hf_engine import HFEngine
    from rollout.types import SamplingParams
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = load_prompts(dataset, "test", problems, 0)
    prompts = [tok(r["prompt"])["input_ids"] for r in rows]
    answers = [r["answer"] for r in rows]
    engine = HFEngine(str(model_dir), seed=0)

    def correct(samples, n) -> list[bool]:
        texts = tok.batch_decode([x.completion_ids for x in samples], skip_special_tokens=True)
        scores = exact_match([r["prompt"] for r in rows for _ in range(n)], texts, [a for a in answers for _ in range(n)])
        return [v > 0.5 for v in scores]

    greedy = correct(engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)), 1)
    sampled = correct(engine.generate([p for p in prompts for _ in range(k)],
                                      SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=1)), k)
    per_problem = [sampled[i * k:(i + 1) * k] for i in range(len(rows))]
    return {"problems": len(rows), "greedy_accuracy": sum(greedy) / len(rows),
            f"pass@{k}": sum(any(h) for h in per_problem) / len(rows), "sample_accuracy": sum(sampled) / len(sampled)}


def check_tiny_arith(out_dir: Path, seed: int, record: dict) -> dict:
    """Measure the warm start on held-out problems (-> zoo.json's `held_out`) and refuse a model outside the band."""
    b = TINY_ARITH_BAND
    q = held_out_quality(out_dir, "arithmetic", b["problems"], b["k"])
    g, p = q["greedy_accuracy"], q[f"pass@{b['k']}"]
    if not (b["greedy_min"] <= g <= b["greedy_max"] and p >= b["pass_at_k_min"]):
        raise ZooBuildError(
            f"zoo model 'tiny-arith' (seed {seed}) built outside its band: greedy held-out accuracy {g:.3f} (expected "
            f"{b['greedy_min']:.2f}-{b['greedy_max']:.2f}), pass@{b['k']} {p:.3f} (expected >= {b['pass_at_k_min']:.2f}) "
            f"on {q['problems']} held-out problems; final SFT loss {record.get('final_sft_loss', float('nan')):.3f}. The model was not "
            f"cached. This is a bug in the warm-start recipe (rl/zoo.py TINY_ARITH_SFT): please report it with "
            f"this message")
    return {"held_out": q, "band": b}


MODELS.register("tiny-arith")(ZooModel(
    build=build_tiny_arith, check=check_tiny_arith,
    recipe={"kind": "sft", "base": asdict(ARCHS["3m"]), "sft": TINY_ARITH_SFT, "band": TINY_ARITH_BAND,
            "dataset": "arithmetic", "version": 2}))


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

from rl import zoo_expression as _zoo_expression  # noqa: E402,F401  registers tiny-expr (rl/zoo_expression.py)
