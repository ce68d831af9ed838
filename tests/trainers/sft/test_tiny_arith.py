"""tiny-arith's warm start (trainers/sft): the SFT loop lowers the loss and ends its constant phase on the loss; a
model outside the band fails the check and is not cached."""
import dataclasses

import pytest

from envs.datasets import load_prompts
from rl import zoo
from trainers.sft.tiny_arith import check_tiny_arith
from trainers.sft.train import sft


def test_sft_reduces_loss():
    tok = zoo.build_tokenizer()
    model = zoo.init_random_model(zoo.ARCHS["3m"], tok, seed=0)
    losses = sft(model, tok, load_prompts("arithmetic", "train", 256, 0), steps=30, batch_size=32, lr=3e-3)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_a_model_failing_its_check_is_not_cached_and_the_cached_one_survives(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHARD_CACHE", str(tmp_path))
    good = zoo.build("random-3m", seed=2)
    weights = (good / "model.safetensors").read_bytes()
    spec = zoo.MODELS.get("random-3m")
    failing = dataclasses.replace(spec, check=check_tiny_arith)  # a random model is far outside tiny-arith's band
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
    tok = zoo.build_tokenizer()
    model = zoo.init_random_model(zoo.ARCHS["3m"], tok, seed=0)
    losses = sft(model, tok, load_prompts("arithmetic", "train", 256, 0), steps=400, batch_size=32, lr=3e-3, warmup=5,
                 stop_below=1.6, cooldown=7, window=5)
    crossed = next(i for i in range(5, len(losses) + 1) if sum(losses[i - 5:i]) / 5 < 1.6)
    assert len(losses) == crossed + 7 < 400
