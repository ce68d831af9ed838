"""The `diffusion` engine and the masked-diffusion log-prob estimators (`cj_grpo`, `diffu_grpo`): hand-computed
schedules and losses, named errors, and consistency of the trajectory the engine records with what the trainer
recomputes, on a tiny random bidirectional Llama (`tiny_mdlm_dir`, tests/conftest.py)."""
import math

import pytest
import torch

from rl.errors import ConfigError
from rollout.diffusion_engine import (DecodingOptions, DiffusionEngine, ass_schedule, block_plan, eos_gamma,
                                      uniform_schedule)
from rollout.diffusion_logprobs import prompt_mask, step_weights, trajectory_logprobs, until_first_eos
from rollout.logprobs import ESTIMATORS
from rollout.types import SamplingParams
from trainers.grpo.batch import collate
from trainers.sft.masked_diffusion import mdlm_loss


def prompts(tok):
    return [tok("12+34=")["input_ids"], tok("5+7=")["input_ids"]]


# --- schedules (hand values) ---------------------------------------------------------------------------------------
def test_uniform_schedule_gives_the_remainder_to_early_steps():
    assert uniform_schedule(10, 4) == [3, 3, 2, 2]
    assert uniform_schedule(32, 32) == [1] * 32


def test_ass_reveals_powers_of_two_and_the_rest_last():
    assert ass_schedule(32) == [1, 2, 4, 8, 17]  # 1 + 2 + 4 + 8 + 17 = 32 in log2(32) = 5 steps
    assert ass_schedule(2) == [2]
    assert sum(ass_schedule(256)) == 256 and len(ass_schedule(256)) == 8


def test_eoser_gamma_rises_to_gamma_max():
    uni = DecodingOptions(eoser=True)
    assert eos_gamma(0, 5, uni) == pytest.approx(0.4)  # 0.4 + 0.6 * 0/4
    assert eos_gamma(2, 5, uni) == pytest.approx(0.7)  # 0.4 + 0.6 * 2/4
    ass = DecodingOptions(schedule="ass", eoser=True)
    assert eos_gamma(0, 5, ass) == pytest.approx(0.01 + 0.99 * 1 / 32)  # (2^1 - 1) / 2^5
    assert eos_gamma(4, 5, ass) == pytest.approx(0.01 + 0.99 * 31 / 32)


def test_named_errors_for_lengths_the_schedule_cannot_split():
    with pytest.raises(ConfigError, match="not divisible by rollout.decoding.block_length=8"):
        block_plan(30, DecodingOptions(block_length=8))
    with pytest.raises(ConfigError, match="schedule=ass needs a block length that is a power of two"):
        block_plan(24, DecodingOptions(schedule="ass"))
    with pytest.raises(ConfigError, match="steps=6 is not divisible by the 4 blocks"):
        block_plan(32, DecodingOptions(block_length=8, steps=6))
    with pytest.raises(ValueError, match="decides its own step count"):
        DecodingOptions(schedule="ass", steps=4)
    assert block_plan(32, DecodingOptions(block_length=8, steps=8)) == (8, [4, 4])


def test_a_model_without_mask_token_is_refused(tmp_path):
    from rl.zoo import build_tokenizer, init_random_model, ArchSpec

    tok = build_tokenizer()
    init_random_model(ArchSpec(hidden=64, layers=1, heads=1, intermediate=64), tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="has no mask token"):
        DiffusionEngine(str(tmp_path), estimator="cj_grpo")


# --- the masked-diffusion SFT loss (hand value) -------------------------------------------------------------------
def test_mdlm_loss_weights_masked_cross_entropy_by_one_over_p():
    # two positions, vocabulary 2, uniform logits: CE = log 2 at each. Only position 0 is masked, p = 0.5:
    # loss = (log 2 / 0.5) / (B x L = 2) = log 2.
    logits = torch.zeros(1, 2, 2)
    loss = mdlm_loss(logits, torch.tensor([[0, 1]]), torch.tensor([[True, False]]), torch.tensor([0.5]))
    assert loss.item() == pytest.approx(math.log(2))


# --- engine: trajectories, accelerators, reproducibility ------------------------------------------------------------
def engine(d, **opts):
    return DiffusionEngine(str(d), seed=0, estimator="cj_grpo", options=DecodingOptions(**opts))


def test_the_trajectory_reveals_every_position_once_per_schedule(tiny_mdlm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_mdlm_dir)
    for opts, steps in (({}, 16), ({"schedule": "ass"}, 4), ({"steps": 4, "block_length": 8}, 4)):
        e = engine(tiny_mdlm_dir, **opts)
        out = e.generate(prompts(tok), SamplingParams(max_new_tokens=16, temperature=1.0, seed=3))
        for s in out:
            assert len(s.completion_ids) == 16 and tok.mask_token_id not in s.completion_ids
            assert sorted(set(s.reveal_steps)) == list(range(steps))
        assert e.last_forwards == [steps, steps]
    ass = engine(tiny_mdlm_dir, schedule="ass").generate(prompts(tok), SamplingParams(max_new_tokens=16, seed=3))
    assert [ass[0].reveal_steps.count(s) for s in range(4)] == [1, 2, 4, 9]
    semi = engine(tiny_mdlm_dir, steps=4, block_length=8).generate(prompts(tok), SamplingParams(max_new_tokens=16))
    assert max(semi[0].reveal_steps[:8]) < min(semi[0].reveal_steps[8:])  # block 1 finishes before block 2 starts


def test_threshold_decoding_forward_counts(tiny_mdlm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_mdlm_dir)
    sp = SamplingParams(max_new_tokens=16, temperature=0.0)
    e = engine(tiny_mdlm_dir, schedule="threshold", threshold=1e-9, block_length=8)
    e.generate(prompts(tok), sp)
    assert e.last_forwards == [2, 2]  # every position passes: one forward per block
    e = engine(tiny_mdlm_dir, schedule="threshold", threshold=1.0)
    e.generate(prompts(tok), sp)
    assert e.last_forwards == [16, 16]  # none passes: the most confident one per forward
    c = engine(tiny_mdlm_dir, schedule="credit", threshold=1e-9).generate(prompts(tok), sp)
    assert all(set(s.reveal_steps) == {0} for s in c)


def test_generation_is_reproducible_from_the_seed(tiny_mdlm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_mdlm_dir)
    sp = SamplingParams(max_new_tokens=16, temperature=1.0, seed=7)
    a = engine(tiny_mdlm_dir, schedule="ass", eoser=True).generate(prompts(tok), sp)
    b = engine(tiny_mdlm_dir, schedule="ass", eoser=True).generate(prompts(tok), sp)
    assert [s.completion_ids for s in a] == [s.completion_ids for s in b]
    assert [s.reveal_steps for s in a] == [s.reveal_steps for s in b]


# --- estimators ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["uniform", "ass"])
def test_cj_grpo_recomputes_the_engines_behaviour_logprobs(tiny_mdlm_dir, schedule):
    """Trainer and engine score the same actions from the same states: ratio 1 on-policy."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_mdlm_dir)
    e = engine(tiny_mdlm_dir, schedule=schedule, eoser=True)
    out = e.generate(prompts(tok), SamplingParams(max_new_tokens=16, temperature=0.7, seed=1))
    z = torch.zeros(len(out))
    b = collate(out, z, z, z.long(), tok.pad_token_id)
    lp = ESTIMATORS.get("cj_grpo").batch_logprobs(e.model, b, "cpu", 0.7)  # [B, L]
    assert torch.allclose(lp, b.behav_logprobs, atol=1e-5)


def test_cj_trajectory_logprob_by_hand(tiny_mdlm_dir):
    """Position 1 revealed at step 0 is scored from the fully masked canvas; position 0 (step 1) from x_0."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_mdlm_dir).eval()
    mid = m.config.mask_token_id
    ids = torch.tensor([[10, 11, 20, 21]])  # prompt [10, 11], canvas [20, 21]
    attn = torch.ones_like(ids)
    with torch.no_grad():
        lp = trajectory_logprobs(m, ids, attn, 2, torch.tensor([[1, 0]]), 1.0)
        l0 = m(input_ids=torch.tensor([[10, 11, mid, mid]])).logits[0].float()
        l1 = m(input_ids=torch.tensor([[10, 11, mid, 21]])).logits[0].float()
    l0[:, mid] = l1[:, mid] = -math.inf
    assert lp[0, 1].item() == pytest.approx(torch.log_softmax(l0[3], -1)[21].item(), abs=1e-5)
    assert lp[0, 0].item() == pytest.approx(torch.log_softmax(l1[2], -1)[20].item(), abs=1e-5)


def test_diffu_grpo_masks_the_prompt_per_iteration_and_row():
    ids = torch.arange(1, 201).view(2, 100)
    attn = torch.ones_like(ids)
    a0, a0b, a1 = (prompt_mask(ids, attn, 96, it) for it in (0, 0, 1))
    assert torch.equal(a0, a0b) and not torch.equal(a0, a1)  # shared within an iteration, fresh across
    assert torch.equal(prompt_mask(ids[1:], attn[1:], 96, 0)[0], a0[1])  # a row's mask ignores its micro-batch
    assert 0.05 < a0.float().mean().item() < 0.3  # p = 0.15
    attn[:, :10] = 0
    padded = prompt_mask(ids, attn, 96, 0)
    assert not padded[:, :10].any()  # padding is never masked
    assert torch.equal(prompt_mask(ids[:, 10:], attn[:, 10:], 86, 0), padded[:, 10:])  # nor shifts the mask


def test_diffu_grpo_is_one_forward_with_the_completion_masked(tiny_mdlm_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_mdlm_dir).eval()
    mid = m.config.mask_token_id
    ids = torch.tensor([[10, 11, 12, 20, 21]])
    attn = torch.ones_like(ids)
    est = ESTIMATORS.get("diffu_grpo")
    with torch.no_grad():
        lp = est.logprobs(m, ids, attn, 3, 1.0, iteration=2)
        x = ids.clone()
        x[:, 3:] = mid
        x[:, :3] = torch.where(prompt_mask(ids, attn, 3, 2), mid, x[:, :3])
        logits = m(input_ids=x).logits[0, 3:].float()
    logits[:, mid] = -math.inf
    ref = torch.log_softmax(logits, -1).gather(-1, ids[0, 3:, None]).squeeze(-1)
    assert torch.allclose(lp[0], ref, atol=1e-5)


def test_diffu_grpo_trains_up_to_the_first_eos_and_cj_grpo_the_whole_canvas():
    canvas = torch.tensor([[5, 2, 2, 3],   # EOS (2) at 1: its fill after it leaves the loss, the EOS itself stays
                           [5, 6, 7, 8],   # no EOS: every position trains
                           [9, 5, 7, 2]])  # a second EOS id (9) counts too
    assert until_first_eos(canvas, {2, 9}).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert until_first_eos(canvas, {2}).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


def test_cj_grpo_loss_is_the_mean_over_steps_of_each_steps_token_mean():
    from trainers.grpo.loss import aggregate

    # ASS on 8 positions: step 0 reveals 1, step 1 two, step 2 five; the second row is padded after 4 positions
    reveal = torch.tensor([[2, 0, 1, 2, 2, 1, 2, 2], [1, 0, 1, 1, -1, -1, -1, -1]])
    w = step_weights(reveal)
    assert torch.allclose(w[0], torch.tensor([1 / 5, 1, 1 / 2, 1 / 5, 1 / 5, 1 / 2, 1 / 5, 1 / 5]))
    assert torch.allclose(w[1], torch.tensor([1 / 3, 1, 1 / 3, 1 / 3, 0, 0, 0, 0]))
    loss = torch.arange(16.0).view(2, 8)
    row0 = (1 + (2 + 5) / 2 + (0 + 3 + 4 + 6 + 7) / 5) / 3  # (1/S) sum_s mean_{k in U_s}, by hand
    row1 = (9 + (8 + 10 + 11) / 3) / 2
    assert aggregate(loss, w, "seq_mean_token_mean").item() == pytest.approx((row0 + row1) / 2)
    ones = (reveal >= 0).float()  # a plain 0/1 mask is the ordinary per-sequence token mean
    assert aggregate(loss, ones, "seq_mean_token_mean").item() == pytest.approx((loss[0].mean() + 9.5) / 2)
