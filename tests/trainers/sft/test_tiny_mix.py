"""tiny-mix's noisy teacher: the slip it makes on each kind of problem, worked by hand."""
from trainers.sft.tiny_mix import TINY_MIX_SFT, mix_teacher, mixture_rows, parse, units_slip


def test_units_slip_by_hand():
    assert units_slip(37, "+", 45) == 72  # 7 + 5 carries: 82 without the carry
    assert units_slip(31, "+", 45) is None  # no carry
    assert units_slip(82, "-", 37) == 55  # 2 < 7 borrows: 8-3 | 12-7 = 55 instead of 45
    assert units_slip(87, "-", 32) is None
    assert units_slip(37, "*", 4) == 128  # 7 x 4 = 28 carries 2: 3 x 4 = 12 | 8 = 128 instead of 148
    assert units_slip(21, "*", 4) is None
    assert parse("37*4=") == (37, "*", 4)


def test_teacher_slips_at_its_rate_only_where_it_can():
    rows = mixture_rows(0, TINY_MIX_SFT["distinct"], {"arithmetic": 300, "subtraction": 300, "multiplication": 300})
    labelled = mix_teacher(rows, 0.6, 0)
    slippable = [units_slip(*parse(r["prompt"])) is not None for r in rows]
    wrong = [a["answer"] != b["answer"] for a, b in zip(rows, labelled)]
    assert not any(w and not s for w, s in zip(wrong, slippable))
    rate = sum(wrong) / sum(slippable)
    assert 0.5 < rate < 0.7
    assert mix_teacher(rows, 0.6, 0) == labelled
