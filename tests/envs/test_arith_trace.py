"""The `arith_trace` dataset and the tiny-mdlm teacher: hand-written traces, disjoint splits, the noisy teacher
only corrupts carrying problems."""
from envs.arith_trace import trace
from envs.datasets import load_prompts
from trainers.sft.tiny_mdlm import noisy_teacher


def test_traces_by_hand():
    assert trace(37, 45) == "7+5=12,c1,3+4+1=8,82"
    assert trace(37, 45, forget_carry=True) == "7+5=12,c0,3+4=7,72"
    assert trace(12, 34) == "2+4=6,c0,1+3=4,46"
    assert trace(99, 99) == "9+9=18,c1,9+9+1=19,198"


def test_splits_are_disjoint_and_answers_fit_the_canvas():
    train = load_prompts("arith_trace", "train", 500, 0)
    test = load_prompts("arith_trace", "test", 200, 0)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert all(17 <= len(r["answer"]) <= 22 for r in train + test)  # + EOS fits the 32-token canvas


def test_the_noisy_teacher_forgets_only_carries():
    rows = load_prompts("arith_trace", "train", 400, 0)
    noisy = noisy_teacher(rows, 1.0, 0)
    for r, n in zip(rows, noisy):
        carry = r["a"] % 10 + r["b"] % 10 >= 10
        assert (n["answer"] != r["answer"]) == carry
