"""Engine parity: greedy tokens identical and log-probs within 1e-4 between the HF engine, the vLLM engine and the
trainer's own recompute (`policy_logprobs`), before and after a weight update; sampled log-probs are those of the
post-temperature distribution; the same LoRA adapter gives the same greedy output in both engines.

Tests that need vLLM are marked `vllm` (`make test` runs them in their own process: vLLM's in-process engine
changes torch threading for the whole process) and skip with the import error where vLLM cannot be imported.
"""
import pytest
import torch

from rollout.engine import make_engine
from rollout.logprobs import left_pad, policy_logprobs
from rollout.types import SamplingParams

TOL = 1e-4
GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


def recompute(model, samples, temperature: float) -> list[list[float]]:
    """The trainer's log-probs of each sample's completion tokens."""
    ids, attn, P = left_pad([s.prompt_ids for s in samples], [s.completion_ids for s in samples], pad_id=0)
    with torch.no_grad():
        lp = policy_logprobs(model, ids, attn, P, temperature)  # [B, L]
    return [lp[i, :len(s.completion_ids)].tolist() for i, s in enumerate(samples)]


def max_err(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b], "different completion lengths"
    return max((abs(u - v) for x, y in zip(a, b) for u, v in zip(x, y)), default=0.0)


def tokens(samples) -> list[list[int]]:
    return [s.completion_ids for s in samples]


def lps(samples) -> list[list[float]]:
    return [s.logprobs for s in samples]


def check_samples(samples, prompts, version: int, eos_id: int, max_new: int) -> None:
    """Contract of `Sample`: prompt echoed, one log-prob and version per token, EOS <=> 'stop', EOS only last."""
    assert [s.prompt_ids for s in samples] == [list(p) for p in prompts]
    for s in samples:
        n = len(s.completion_ids)
        assert 0 < n <= max_new and len(s.logprobs) == n and s.versions == [version] * n
        assert all(lp <= 0 for lp in s.logprobs)
        assert eos_id not in s.completion_ids[:-1]
        assert s.finish_reason == ("stop" if s.completion_ids[-1] == eos_id else "length")
        assert s.finish_reason == "stop" or n == max_new


# --- the trainer's recompute -------------------------------------------------------------------------------------
def test_policy_logprobs_is_unaffected_by_left_padding(base_model):
    """A row scored alone equals the same row inside a left/right-padded batch (positions count real tokens)."""
    prompts, completions = [[5, 6, 7, 8, 9, 10], [11, 12]], [[13, 14, 15], [16]]
    ids, attn, P = left_pad(prompts, completions, pad_id=0)
    assert ids.tolist()[1] == [0, 0, 0, 0, 11, 12, 16, 0, 0] and P == 6
    with torch.no_grad():
        batched = policy_logprobs(base_model, ids, attn, P, 0.7)  # [2, 3]
        for i, (p, c) in enumerate(zip(prompts, completions)):
            x = torch.tensor([p + c])
            alone = policy_logprobs(base_model, x, torch.ones_like(x), len(p), 0.7)[0]  # [len(c)]
            # by hand: log_softmax(logits / T) at the position before each completion token
            logits = base_model(input_ids=x).logits[0, len(p) - 1:-1] / 0.7  # [len(c), V]
            by_hand = torch.log_softmax(logits, -1)[torch.arange(len(c)), torch.tensor(c)]
            assert torch.allclose(alone, by_hand, atol=1e-6)
            assert torch.allclose(batched[i, :len(c)], alone, atol=1e-5)


# --- HF engine (no vLLM needed) ----------------------------------------------------------------------------------
def test_hf_engine_matches_recompute_greedy_and_sampled(model_dir, prompts, base_model, tokenizer):
    e = make_engine("hf", str(model_dir), seed=0, options={"max_batch": 3})  # chunks of 3: padding differs per chunk
    greedy = e.generate(prompts, GREEDY)
    check_samples(greedy, prompts, 0, tokenizer.eos_token_id, 12)
    assert max_err(lps(greedy), recompute(base_model, greedy, 0.0)) < TOL
    for T in (1.0, 0.7):
        sp = SamplingParams(max_new_tokens=10, temperature=T, seed=1)
        out = e.generate(prompts, sp)
        check_samples(out, prompts, 0, tokenizer.eos_token_id, 10)
        assert max_err(lps(out), recompute(base_model, out, T)) < TOL, f"behaviour log-probs at T={T}"
        assert tokens(e.generate(prompts, sp)) == tokens(out), "same seed must reproduce"
    assert max_err(lps(out), recompute(base_model, out, 1.0)) > 1e-2, "temperature ignored"
    assert tokens(e.generate(prompts, SamplingParams(max_new_tokens=10, temperature=0.7, seed=2))) != tokens(out)
    assert max_err(e.score(prompts, tokens(out), 1.0), recompute(base_model, out, 1.0)) < TOL


def test_hf_top_p_logprobs_are_of_the_renormalised_nucleus(model_dir, prompts, base_model):
    e = make_engine("hf", str(model_dir), seed=0)
    out = e.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.3, seed=4))
    full = recompute(base_model, out, 1.0)
    # the nucleus holds mass >= 0.3, so renormalising raises each log-prob by at most -log(0.3); some rise
    gain = [u - v for x, y in zip(lps(out), full) for u, v in zip(x, y)]
    assert all(-1e-5 <= g <= -torch.log(torch.tensor(0.3)).item() + 1e-5 for g in gain) and max(gain) > 1e-3


def test_hf_update_weights(model_dir, prompts, trained_model, base_model):
    e = make_engine("hf", str(model_dir), seed=0)
    before = e.generate(prompts, GREEDY)
    e.update_weights(trained_model.state_dict().items(), version=4)
    after = e.generate(prompts, GREEDY)
    assert all(s.versions == [4] * len(s.completion_ids) for s in after)
    assert tokens(after) != tokens(before)
    assert max_err(lps(after), recompute(trained_model, after, 0.0)) < TOL
    with pytest.raises(KeyError, match="no parameter 'nope.weight'"):
        e.update_weights([("nope.weight", torch.zeros(1))], version=5)
    with pytest.raises(ValueError, match="has shape"):
        e.update_weights([("model.norm.weight", torch.zeros(3))], version=5)
    e.update_weights(base_model.state_dict().items(), version=6)  # back to the start
    assert tokens(e.generate(prompts, GREEDY)) == tokens(before)


def test_hf_lora_matches_peft_recompute(model_dir, prompts, lora_dir, base_model):
    from peft import PeftModel

    plain = make_engine("hf", str(model_dir)).generate(prompts, GREEDY)
    e = make_engine("hf", str(model_dir), lora=str(lora_dir))
    out = e.generate(prompts, GREEDY)
    assert tokens(out) != tokens(plain), "the adapter has no effect"
    peft_model = PeftModel.from_pretrained(load_fresh(model_dir), lora_dir).eval()
    assert max_err(lps(out), recompute(peft_model, out, 0.0)) < TOL
    e.update_weights(base_model.state_dict().items(), version=1)  # a full update drops the adapter
    assert tokens(e.generate(prompts, GREEDY)) == tokens(plain)
    e.load_lora(str(lora_dir), version=2)
    again = e.generate(prompts, GREEDY)
    assert tokens(again) == tokens(out) and again[0].versions[0] == 2


def load_fresh(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def test_make_engine_options(model_dir):
    """Engines come from the registry, each with its own typed options section: another engine's options, an
    unknown or ill-typed field, or another engine's section are errors naming what is wrong."""
    from pydantic import ValidationError

    from rl.config import load_config
    from rollout.engine import ENGINES, engine_options
    from rollout.hf_engine import HFOptions
    from rollout.logprobs import ESTIMATORS
    from rollout.vllm_engine import VLLMOptions

    assert ENGINES.names() == ["btm_ensemble", "hf", "vllm"]
    with pytest.raises(KeyError, match="unknown rollout engine 'sglang'"):
        make_engine("sglang", str(model_dir))
    with pytest.raises(ValidationError, match="max_model_len"):  # a vLLM option is not an HF option
        make_engine("hf", str(model_dir), options={"max_model_len": 64})
    with pytest.raises(ValidationError, match="max_batchh"):
        make_engine("hf", str(model_dir), options={"max_batchh": 4})
    with pytest.raises(TypeError, match="takes HFOptions options, got VLLMOptions"):
        make_engine("hf", str(model_dir), options=VLLMOptions())
    e = make_engine("hf", str(model_dir), options={"max_batch": 3})
    assert e.max_batch == 3 and e.estimator is ESTIMATORS.get("causal")  # the estimator loaded the model
    with pytest.raises(KeyError, match="unknown log-prob estimator 'diffusion'"):
        make_engine("hf", str(model_dir), estimator="diffusion")
    # one default per option: the config's sections are the engines' own
    cfg = load_config("configs/grpo_tiny.yaml", ["rollout.vllm.gpu_memory_utilization=0.4"])
    assert isinstance(cfg.rollout.hf, HFOptions) and cfg.rollout.engine_options is cfg.rollout.hf
    assert VLLMOptions().gpu_memory_utilization == 0.3 and cfg.rollout.vllm.gpu_memory_utilization == 0.4
    assert engine_options("vllm") == VLLMOptions() and engine_options("hf", {"max_batch": 2}).max_batch == 2


# --- vLLM vs HF vs the trainer -----------------------------------------------------------------------------------
@pytest.mark.vllm
def test_greedy_parity_before_and_after_weight_update(vllm_pool, model_dir, prompts, base_model, trained_model, tokenizer):
    engines = {"vllm": vllm_pool.get(), "hf": make_engine("hf", str(model_dir), seed=0)}
    try:
        before = {k: e.generate(prompts, GREEDY) for k, e in engines.items()}
        after = {}
        for k, e in engines.items():
            e.update_weights(trained_model.state_dict().items(), version=7)
            after[k] = e.generate(prompts, GREEDY)
        scored = {k: e.score(prompts, tokens(after[k]), 1.0) for k, e in engines.items()}
    finally:
        engines["vllm"].update_weights(base_model.state_dict().items(), version=0)  # leave it as loaded
    for when, out, model, version in [("before", before, base_model, 0), ("after", after, trained_model, 7)]:
        for k in engines:
            check_samples(out[k], prompts, version, tokenizer.eos_token_id, 12)
        assert tokens(out["hf"]) == tokens(out["vllm"]), f"greedy tokens differ {when} the update"
        assert max_err(lps(out["hf"]), lps(out["vllm"])) < TOL, f"hf vs vllm {when}"
        assert max_err(lps(out["vllm"]), recompute(model, out["vllm"], 0.0)) < TOL, f"vllm vs trainer {when}"
        assert max_err(lps(out["hf"]), recompute(model, out["hf"], 0.0)) < TOL, f"hf vs trainer {when}"
    assert tokens(after["vllm"]) != tokens(before["vllm"]), "the update changed nothing: this test could not fail"
    assert {s.finish_reason for s in after["vllm"]} == {"stop", "length"}, "EOS handling not exercised"
    for k in engines:  # the weight-sync probe path
        assert max_err(scored[k], recompute(trained_model, after[k], 1.0)) < TOL, f"{k} score()"


@pytest.mark.vllm
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_vllm_sampled_logprobs_match_recompute(vllm_pool, prompts, base_model, tokenizer, temperature):
    e = vllm_pool.get()
    sp = SamplingParams(max_new_tokens=10, temperature=temperature, seed=3)
    out = e.generate(prompts * 2, sp)
    check_samples(out, prompts * 2, e.version, tokenizer.eos_token_id, 10)
    assert max_err(lps(out), recompute(base_model, out, temperature)) < TOL
    assert tokens(e.generate(prompts * 2, sp)) == tokens(out), "same seed must reproduce"
    n = len(prompts)
    assert tokens(out[:n]) != tokens(out[n:]), "repeated prompts must get different samples"
    if temperature != 1.0:
        assert max_err(lps(out), recompute(base_model, out, 1.0)) > 1e-2, "temperature ignored"
        with pytest.raises(ValueError, match="only temperature 1"):
            e.score(prompts, tokens(out), temperature)


@pytest.mark.vllm
def test_vllm_update_weights_rejects_bad_tensors(vllm_pool):
    e = vllm_pool.get()
    with pytest.raises(KeyError, match="no parameter 'base_model.model.x.weight'.*merge LoRA"):
        e.update_weights([("base_model.model.x.weight", torch.zeros(1))], version=1)
    with pytest.raises(ValueError, match="has shape"):
        e.update_weights([("model.norm.weight", torch.zeros(3))], version=1)
    assert e.version == 0


@pytest.mark.vllm
def test_lora_same_greedy_output_in_both_engines(vllm_pool, model_dir, prompts, lora_dir, base_model):
    hf = make_engine("hf", str(model_dir), lora=str(lora_dir))
    v = vllm_pool.get(lora=True)
    plain = v.generate(prompts, GREEDY)
    v.load_lora(str(lora_dir), version=1)
    out_v, out_hf = v.generate(prompts, GREEDY), hf.generate(prompts, GREEDY)
    assert tokens(out_v) != tokens(plain), "the adapter has no effect"
    assert tokens(out_v) == tokens(out_hf)
    assert max_err(lps(out_v), lps(out_hf)) < TOL
    assert max_err(v.score(prompts, tokens(out_v), 1.0), hf.score(prompts, tokens(out_v), 1.0)) < TOL
    v.update_weights(base_model.state_dict().items(), version=2)  # a full update drops the adapter
    assert tokens(v.generate(prompts, GREEDY)) == tokens(plain)
