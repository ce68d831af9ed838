"""tiny-mdlm's band: the held-out check splits out the problems whose units carry, and refuses a warm start that
never samples a correct carrying trace (the regime in which GRPO had no positive sample to learn from)."""
import pytest

import trainers.sft.tiny_mdlm as tm
from envs.datasets import load_prompts
from rl.zoo import ZooBuildError


def test_carries_by_hand():
    assert tm.carries({"a": 37, "b": 45}) and tm.carries({"a": 15, "b": 15})
    assert not tm.carries({"a": 31, "b": 45}) and not tm.carries({"a": 14, "b": 15})


def quality(greedy, pass_k, pass_k_carry):
    return {"problems": 100, "greedy_accuracy": greedy, "pass@4": pass_k, "sample_accuracy": greedy,
            "carry_problems": 45, "greedy_accuracy_carry": 0.0, "pass@4_carry": pass_k_carry}


@pytest.mark.parametrize("q, ok", [
    (quality(0.64, 0.64, 0.0), False),  # teacher error 0.6: carry problems never solved, though pass@4 passes
    (quality(0.58, 0.66, 0.26), True),
    (quality(0.95, 0.99, 0.90), False),  # no room for RL
    (quality(0.58, 0.20, 0.20), False),
])
def test_the_band_demands_carrying_problems_be_solved_sometimes(monkeypatch, tmp_path, q, ok):
    monkeypatch.setattr(tm, "held_out_quality", lambda *a, **k: q)
    if ok:
        assert tm.check_tiny_mdlm(tmp_path, 0, {})["held_out"] == q
    else:
        with pytest.raises(ZooBuildError, match="carrying problems"):
            tm.check_tiny_mdlm(tmp_path, 0, {"final_sft_loss": 0.1})


def test_held_out_quality_counts_the_carrying_problems(tiny_mdlm_dir):
    q = tm.held_out_quality(tiny_mdlm_dir, 12, 2, L=8)
    rows = load_prompts("arith_trace", "test", 12, 0)
    assert q["problems"] == 12 and q["carry_problems"] == sum(tm.carries(r) for r in rows) > 0
    assert 0 <= q["pass@2_carry"] <= 1 and 0 <= q["greedy_accuracy_carry"] <= 1
