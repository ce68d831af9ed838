"""Model zoo: the character tokenizer, building/caching, loading with transformers, path resolution errors."""
import pytest
import torch

from rl import zoo
from rl.errors import ConfigError


def test_tokenizer_round_trip():
    tok = zoo.build_tokenizer()
    ids = tok("12+34=46")["input_ids"]
    assert len(ids) == 8 and tok.decode(ids) == "12+34=46"
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == "12+34=46"
    assert tok.eos_token_id == 2 and tok.pad_token_id == 0


def test_build_is_cached_and_loads_with_transformers(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("ORCHARD_CACHE", str(tmp_path))
    p = zoo.build("random-3m", seed=1)
    mtime = (p / "config.json").stat().st_mtime_ns
    assert zoo.build("random-3m", seed=1) == p and (p / "config.json").stat().st_mtime_ns == mtime
    model = AutoModelForCausalLM.from_pretrained(p)
    tok = AutoTokenizer.from_pretrained(p)
    assert model.config.hidden_size // model.config.num_attention_heads == 64
    assert tok.decode(tok("7+8=")["input_ids"]) == "7+8="
    info = zoo.describe(p)
    assert 2e6 < info["params"] < 4e6
    assert zoo.resolve_model_path(str(p)) == p


def test_resolve_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        zoo.resolve_model_path(str(tmp_path))
    with pytest.raises(ConfigError, match="did you mean 'tiny-arith'"):
        zoo.resolve_model_path("tiny-arth")


def test_sft_reduces_loss():
    from envs.datasets import load_prompts
    from rl.sft import sft

    tok = zoo.build_tokenizer()
    model = zoo.init_random_model(zoo.ARCHS["3m"], tok, seed=0)
    losses = sft(model, tok, load_prompts("arithmetic", "train", 256, 0), steps=30, batch_size=32, lr=3e-3)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_cache_key_carries_the_recipe_hash(tmp_path, monkeypatch):
    """A changed recipe builds a new model instead of reusing the cached one; zoo.json records the recipe."""
    import dataclasses
    import json

    monkeypatch.setenv("ORCHARD_CACHE", str(tmp_path))
    p1 = zoo.build("random-3m", seed=1)
    assert json.loads((p1 / "zoo.json").read_text())["recipe_hash"] == zoo.MODELS.get("random-3m").recipe_hash
    assert p1.name.endswith(zoo.MODELS.get("random-3m").recipe_hash)
    spec = zoo.MODELS.get("random-3m")
    changed = dataclasses.replace(spec, recipe={**spec.recipe, "version": spec.recipe["version"] + 1})
    monkeypatch.setitem(zoo.MODELS._items, "random-3m", changed)
    p2 = zoo.build("random-3m", seed=1)
    assert p2 != p1 and zoo.is_hf_model_dir(p1) and zoo.is_hf_model_dir(p2)


def test_a_model_failing_its_check_is_not_cached_and_the_cached_one_survives(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setenv("ORCHARD_CACHE", str(tmp_path))
    good = zoo.build("random-3m", seed=2)
    weights = (good / "model.safetensors").read_bytes()
    spec = zoo.MODELS.get("random-3m")
    failing = dataclasses.replace(spec, check=zoo.check_tiny_arith)  # a random model is far outside tiny-arith's band
    monkeypatch.setitem(zoo.MODELS._items, "random-3m", failing)
    with pytest.raises(zoo.ZooBuildError, match=r"greedy held-out accuracy 0\.0\d\d \(expected 0\.40-0\.85\).*not cached"):
        zoo.build("random-3m", seed=2, force=True)
    assert (good / "model.safetensors").read_bytes() == weights  # --force that fails leaves the cached model alone
    with pytest.raises(zoo.ZooBuildError):
        zoo.build("random-3m", seed=3)
    assert sorted(p.name for p in zoo.cache_root().iterdir()) == [good.name]  # no seed-3 model, no temp dir


def test_sft_constant_phase_ends_on_the_loss_then_cools_down():
    """stop_below: the constant-lr phase ends when the mean loss of the last `window` steps falls below it; then
    exactly `cooldown` more steps run (cosine to 0) and training stops, well before the step cap."""
    from envs.datasets import load_prompts
    from rl.sft import sft

    tok = zoo.build_tokenizer()
    model = zoo.init_random_model(zoo.ARCHS["3m"], tok, seed=0)
    losses = sft(model, tok, load_prompts("arithmetic", "train", 256, 0), steps=400, batch_size=32, lr=3e-3, warmup=5,
                 stop_below=1.6, cooldown=7, window=5)
    crossed = next(i for i in range(5, len(losses) + 1) if sum(losses[i - 5:i]) / 5 < 1.6)
    assert len(losses) == crossed + 7 < 400
