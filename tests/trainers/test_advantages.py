"""Advantage estimators: hand-computed values and the vectorised code against a plain loop."""
import statistics

import pytest
import torch

from trainers.advantages import ADVANTAGES, zero_std_groups

TESTED = {"grpo", "dr_grpo", "rloo", "reinforce"}
R = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
G = torch.tensor([0, 0, 0, 1, 1, 2])


def test_grpo_hand_example():
    # group 0 = [1, 0, 0]: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3) = 0.57735
    # -> [0.6667/0.57735, -0.3333/0.57735, ...] = [1.1547, -0.5774, -0.5774]; group 1 all equal -> 0; group 2 single -> 0
    adv = ADVANTAGES.get("grpo")(R, G)
    assert adv.tolist() == pytest.approx([1.1547, -0.57735, -0.57735, 0, 0, 0], abs=1e-4)


def test_dr_grpo_and_rloo_hand_examples():
    assert ADVANTAGES.get("dr_grpo")(R, G).tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0], abs=1e-6)
    # RLOO: r - mean(others): 1 - 0 = 1, 0 - 0.5 = -0.5, -0.5; group 1: 0; single: 0
    assert ADVANTAGES.get("rloo")(R, G).tolist() == pytest.approx([1.0, -0.5, -0.5, 0, 0, 0], abs=1e-6)
    # REINFORCE with a batch-mean baseline: mean = 4/6
    assert ADVANTAGES.get("reinforce")(R, G).tolist() == pytest.approx((R - 4 / 6).tolist(), abs=1e-6)


def test_invalid_samples_are_excluded_and_zeroed():
    valid = torch.tensor([True, True, False, True, True, True])
    # group 0 valid = [1, 0]: mean 0.5 -> dr_grpo [0.5, -0.5, 0 (invalid)]
    assert ADVANTAGES.get("dr_grpo")(R, G, valid).tolist()[:3] == pytest.approx([0.5, -0.5, 0.0])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_vectorised_matches_loop(name):
    g = torch.Generator().manual_seed(0)
    r = torch.randn(40, generator=g)
    gid = torch.randint(0, 7, (40,), generator=g)
    adv = ADVANTAGES.get(name)(r, gid)
    for i in range(40):
        grp = [r[j].item() for j in range(40) if gid[j] == gid[i]]
        if len(grp) < 2:
            assert adv[i].item() == 0.0
            continue
        mean = statistics.fmean(grp)
        expected = {"grpo": (r[i].item() - mean) / (statistics.stdev(grp) + 1e-6),
                    "dr_grpo": r[i].item() - mean,
                    "rloo": r[i].item() - (sum(grp) - r[i].item()) / (len(grp) - 1)}[name]
        assert adv[i].item() == pytest.approx(expected, abs=1e-5)


def test_zero_std_groups():
    assert zero_std_groups(R, G).tolist() == [False, False, False, True, True, True]


def test_every_registered_estimator_is_tested():
    assert set(ADVANTAGES.names()) <= TESTED


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="duplicate"):
        ADVANTAGES.register("grpo")(lambda *a: None)
