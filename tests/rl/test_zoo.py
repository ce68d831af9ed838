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
