"""The `btm_ensemble` engine: BTM's posterior, mixture and prior against hand-computed values, and the engine against
the `hf` engine where the mixture must reduce to one model."""
from __future__ import annotations

import json
import math

import pytest
import torch

from rl.errors import OrchardError
from rollout.engine import ENGINES, make_engine
from rollout.ensemble_engine import (EnsembleEngine, EnsembleOptions, estimate_prior, log_posterior,
                                     mixture_logprobs, write_ensemble_dir)
from rollout.types import SamplingParams


def test_posterior_is_prior_times_likelihood():
    # prior (0.25, 0.75), sequence likelihoods (0.8, 0.1): posterior ∝ (0.2, 0.075) = (0.7273, 0.2727)
    post = log_posterior(torch.tensor([0.25, 0.75]).log(), torch.tensor([[0.8, 0.1]]).log()).exp()
    torch.testing.assert_close(post, torch.tensor([[0.2 / 0.275, 0.075 / 0.275]]))


def test_mixture_and_top_k():
    # two experts over 3 tokens, posterior (0.6, 0.4):
    # p = 0.6 (0.5, 0.3, 0.2) + 0.4 (0.1, 0.1, 0.8) = (0.34, 0.22, 0.44)
    p1, p2 = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.1, 0.1, 0.8])
    lp = torch.stack([p1, p2]).log()[:, None, :]  # [J=2, B=1, V=3]
    post = torch.tensor([[0.6, 0.4]]).log()
    torch.testing.assert_close(mixture_logprobs(lp, post).exp(), torch.tensor([[0.34, 0.22, 0.44]]))
    # top-1 keeps expert 1 only (renormalised to weight 1)
    torch.testing.assert_close(mixture_logprobs(lp, post, top_k=1).exp(), p1[None])


def test_prior_is_an_ema_of_posteriors():
    # uniform start; sequence 1 likelihoods (0.9, 0.1) -> posterior (0.9, 0.1) -> prior 0.7 (0.5, 0.5) + 0.3 (0.9, 0.1)
    # = (0.62, 0.38); sequence 2 (0.5, 0.5) -> posterior = prior -> unchanged
    ll = torch.tensor([[0.9, 0.1], [0.5, 0.5]]).log()
    torch.testing.assert_close(estimate_prior(ll[:1], alpha=0.3), torch.tensor([0.62, 0.38]))
    torch.testing.assert_close(estimate_prior(ll, alpha=0.3), torch.tensor([0.62, 0.38]))


@pytest.fixture(scope="module")
def ensemble_dirs(model_dir, tmp_path_factory):
    """An ensemble of the same model twice (must equal that model), and of the model with a perturbed copy."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("ens")
    other = root / "other"
    m = AutoModelForCausalLM.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    m.save_pretrained(other)
    for f in model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special")):
            (other / f.name).write_bytes(f.read_bytes())
    same = write_ensemble_dir(root / "same", [str(model_dir), str(model_dir)])
    mixed = write_ensemble_dir(root / "mixed", [str(model_dir), str(other)])
    return same, mixed, other


def test_two_copies_of_one_model_generate_as_that_model(model_dir, ensemble_dirs, prompts):
    same, _, _ = ensemble_dirs
    sp = SamplingParams(max_new_tokens=6, temperature=0.0)
    want = make_engine("hf", str(model_dir)).generate(prompts, sp)
    got = make_engine("btm_ensemble", str(same)).generate(prompts, sp)
    for w, g in zip(want, got):
        assert g.completion_ids == w.completion_ids
        assert max(abs(a - b) for a, b in zip(g.logprobs, w.logprobs)) < 1e-4


def test_generation_logprobs_are_the_posterior_mixture(ensemble_dirs, model_dir, prompts):
    """Each generated token's log-prob is recomputed by hand: the posterior from each expert's likelihood of the
    sequence so far (uniform prior), mixing the two experts' next-token distributions."""
    _, mixed, other = ensemble_dirs
    from transformers import AutoModelForCausalLM

    eng = EnsembleEngine(str(mixed), seed=0)
    s = eng.generate(prompts[:2], SamplingParams(max_new_tokens=4, temperature=1.0, seed=5))
    models = [AutoModelForCausalLM.from_pretrained(d).eval() for d in (model_dir, other)]
    for sample in s:
        seq = list(sample.prompt_ids)
        for tok, lp in zip(sample.completion_ids, sample.logprobs):
            with torch.no_grad():
                lps = [torch.log_softmax(m(torch.tensor([seq])).logits[0].float(), -1) for m in models]  # [S, V]
            ll = torch.tensor([sum(l[t, seq[t + 1]].item() for t in range(len(seq) - 1)) for l in lps])
            post = torch.softmax(ll + math.log(0.5), 0)
            p = sum(post[j] * lps[j][-1].exp()[tok] for j in range(2))
            assert abs(math.log(p) - lp) < 1e-4
            seq.append(tok)


def test_prior_and_top_k_options(ensemble_dirs, model_dir, prompts):
    _, mixed, _ = ensemble_dirs
    sp = SamplingParams(max_new_tokens=5, temperature=0.0)
    want = make_engine("hf", str(model_dir)).generate(prompts, sp)
    got = EnsembleEngine(str(mixed), options=EnsembleOptions(prior=[1.0, 0.0])).generate(prompts, sp)
    assert [g.completion_ids for g in got] == [w.completion_ids for w in want]  # all prior mass on expert 0
    with pytest.raises(OrchardError, match="needs 2 non-negative weights"):
        EnsembleEngine(str(mixed), options=EnsembleOptions(prior=[1.0]))


def test_errors(model_dir, ensemble_dirs):
    assert "btm_ensemble" in ENGINES
    with pytest.raises(OrchardError, match="not an ensemble directory"):
        EnsembleEngine(str(model_dir))
    eng = EnsembleEngine(str(ensemble_dirs[0]))
    with pytest.raises(OrchardError, match="cannot take trained weights"):
        eng.update_weights([], 1)
    spec = json.loads((ensemble_dirs[0] / "ensemble.json").read_text())
    assert len(spec["experts"]) == 2
