"""Model zoo: the character tokenizer, building/caching, loading with transformers, path resolution errors,
providers registering their models on first lookup."""
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


def test_providers_register_their_models_on_first_lookup():
    """rl.zoo imports no trainers/ or envs/ module; the registry imports its providers (tiny-arith's module) the
    first time it is read, whichever entry point reads it."""
    import subprocess
    import sys

    code = ("import sys; from rl import zoo; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('trainers', 'envs')], sorted(sys.modules); "
            "assert 'tiny-arith' in zoo.MODELS; assert 'trainers.sft.tiny_arith' in sys.modules; "
            "print(zoo.cache_dir('tiny-arith', 0).name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().startswith("tiny-arith-seed0-")
