"""Advantage estimators: hand-computed values for every registered name, the vectorised code against a plain
Python loop, invalid samples, groups of one, and the DAPO zero-std helper."""
import math
import statistics

import pytest
import torch

from trainers.advantages import ADVANTAGES, group_stats, zero_std_groups

# 6 samples: group 0 = [1, 0, 0], group 1 = [1, 1] (all equal), group 2 = [1] (alone)
R = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
G = torch.tensor([0, 0, 0, 1, 1, 2])
S3 = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0]: sqrt(((2/3)^2 + 2 (1/3)^2) / (3 - 1)) = sqrt(1/3) = 0.57735

HAND_CASES = {
    # (r - mean) / (std + 1e-6): group 0 mean 1/3 -> [2/3, -1/3, -1/3] / 0.57735 = [1.1547, -0.57735, -0.57735];
    # group 1 std 0 -> 0 / eps = 0; group 2 has one sample -> 0
    "grpo": [(2 / 3) / (S3 + 1e-6), (-1 / 3) / (S3 + 1e-6), (-1 / 3) / (S3 + 1e-6), 0.0, 0.0, 0.0],
    # r - mean: [2/3, -1/3, -1/3], group 1: 1 - 1 = 0, group 2 alone -> 0
    "dr_grpo": [2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0],
    # r - mean(others): 1 - (0 + 0)/2 = 1, 0 - (1 + 0)/2 = -0.5, -0.5; group 1: 1 - 1 = 0; alone -> 0
    "rloo": [1.0, -0.5, -0.5, 0.0, 0.0, 0.0],
    # r - batch mean, batch mean = 4/6 = 0.6667 -> [1/3, -2/3, -2/3, 1/3, 1/3, 1/3] (the single sample is not 0)
    "reinforce": [1 / 3, -2 / 3, -2 / 3, 1 / 3, 1 / 3, 1 / 3],
}
COVERED = set(HAND_CASES)  # test_registries.py checks every registered name is in here


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_example(name):
    adv = ADVANTAGES.get(name)(R, G)
    assert adv.shape == (6,) and adv.dtype == torch.float32
    assert adv.tolist() == pytest.approx(HAND_CASES[name], abs=1e-6)


def test_grpo_uses_the_unbiased_std_and_eps():
    # group [1, 0]: mean 0.5, unbiased std sqrt((0.25 + 0.25) / 1) = 0.70711 -> +-0.5 / 0.70711 = +-0.70711
    # (the population std 0.5 would give +-1)
    r, g = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    assert ADVANTAGES.get("grpo")(r, g).tolist() == pytest.approx([0.70711, -0.70711], abs=1e-5)
    # eps = 1: 0.5 / (0.70711 + 1) = 0.29289
    assert ADVANTAGES.get("grpo")(r, g, eps=1.0).tolist() == pytest.approx([0.29289, -0.29289], abs=1e-5)


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_invalid_samples_are_excluded_and_zeroed(name):
    # sample 2 of group 0 is invalid and its reward NaN (a failed reward function): group 0 is [1, 0] for the
    # statistics, sample 2 gets 0, nothing is NaN
    r = torch.tensor([1.0, 0.0, float("nan"), 1.0, 1.0, 1.0])
    valid = torch.tensor([True, True, False, True, True, True])
    adv = ADVANTAGES.get(name)(r, G, valid)
    expected = {"grpo": [0.70711, -0.70711],  # see test_grpo_uses_the_unbiased_std_and_eps
                "dr_grpo": [0.5, -0.5],  # mean 0.5
                "rloo": [1.0, -1.0],  # 1 - 0, 0 - 1
                "reinforce": [1 - 4 / 5, 0 - 4 / 5]}[name]  # batch mean over the 5 valid rewards = 4/5
    assert not torch.isnan(adv).any()
    assert adv[:3].tolist() == pytest.approx(expected + [0.0], abs=1e-5)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_a_group_with_one_valid_sample_gets_zero(name):
    # group 0 = [1, 0, 5] but only the 5 is valid -> no baseline -> all 0
    r, g = torch.tensor([1.0, 0.0, 5.0]), torch.tensor([0, 0, 0])
    assert ADVANTAGES.get(name)(r, g, torch.tensor([False, False, True])).tolist() == [0.0, 0.0, 0.0]


def test_grpo_with_zero_eps_has_no_nan():
    # eps = 0: the all-equal group 1 and the lone group 2 would be 0 / 0; they get 0
    assert ADVANTAGES.get("grpo")(R, G, eps=0.0).tolist() == pytest.approx([2 / 3 / S3, -1 / 3 / S3, -1 / 3 / S3,
                                                                           0.0, 0.0, 0.0], abs=1e-6)


def test_non_contiguous_group_ids():
    # ids 7 and 2, interleaved: group 7 = [3, 1] -> dr_grpo [1, -1]; group 2 = [0, 4] -> [-2, 2]
    r, g = torch.tensor([3.0, 0.0, 1.0, 4.0]), torch.tensor([7, 2, 7, 2])
    assert ADVANTAGES.get("dr_grpo")(r, g).tolist() == [1.0, -2.0, -1.0, 2.0]


def _loop(name, r, gid, valid, eps=1e-6):
    """Reference implementation, one sample at a time in plain Python."""
    out = []
    vals = [r[i] for i in range(len(r)) if valid[i]]
    for i in range(len(r)):
        if not valid[i]:
            out.append(0.0)
            continue
        if name == "reinforce":
            out.append(r[i] - statistics.fmean(vals))
            continue
        grp = [r[j] for j in range(len(r)) if gid[j] == gid[i] and valid[j]]
        if len(grp) < 2:
            out.append(0.0)
            continue
        mean = statistics.fmean(grp)
        out.append({"grpo": (r[i] - mean) / (statistics.stdev(grp) + eps),
                    "dr_grpo": r[i] - mean,
                    "rloo": r[i] - (sum(grp) - r[i]) / (len(grp) - 1)}[name])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_vectorised_matches_loop(name, seed):
    g = torch.Generator().manual_seed(seed)
    B = 50
    r = torch.randn(B, generator=g)
    r[:10] = torch.randint(0, 2, (10,), generator=g).float()  # some exact ties, as with 0/1 rewards
    gid = torch.randint(0, 12, (B,), generator=g)  # random sizes, including groups of one and missing ids
    valid = torch.rand(B, generator=g) > 0.2
    for v in (None, valid):
        adv = ADVANTAGES.get(name)(r, gid, v)
        expected = _loop(name, r.tolist(), gid.tolist(), [True] * B if v is None else v.tolist())
        assert adv.tolist() == pytest.approx(expected, abs=1e-5)


def test_group_stats_hand_example():
    s = group_stats(R, G)
    assert s.mean.tolist() == pytest.approx([1 / 3] * 3 + [1.0, 1.0, 1.0])
    assert s.std.tolist() == pytest.approx([S3] * 3 + [0.0, 0.0, 0.0])  # group of one: std 0
    assert s.count.tolist() == [3, 3, 3, 2, 2, 1]


def test_zero_std_groups():
    # group 0 differs; group 1 all equal; group 2 alone
    assert zero_std_groups(R, G).tolist() == [False, False, False, True, True, True]
    # dropping the 1 of group 0 leaves [0, 0] (all equal); an invalid NaN does not break the comparison
    r = torch.tensor([float("nan"), 0.0, 0.0, 1.0, 1.0, 1.0])
    valid = torch.tensor([False, True, True, True, True, True])
    assert zero_std_groups(r, G, valid).tolist() == [True] * 6
    # a group with no valid sample has no signal either
    assert zero_std_groups(R, G, torch.tensor([True, True, True, False, False, True])).tolist()[3:5] == [True, True]
    # rewards equal up to float noise are not "all equal": exact comparison, no threshold
    assert zero_std_groups(torch.tensor([0.1, 0.1 + 1e-7]), torch.tensor([0, 0])).tolist() == [False, False]


def test_zero_std_groups_matches_loop():
    g = torch.Generator().manual_seed(3)
    r = torch.randint(0, 2, (60,), generator=g).float()  # 0/1 accuracy rewards
    gid = torch.randint(0, 15, (60,), generator=g)
    valid = torch.rand(60, generator=g) > 0.1
    flat = zero_std_groups(r, gid, valid)
    for i in range(60):
        grp = {r[j].item() for j in range(60) if gid[j] == gid[i] and valid[j]}
        n = sum(1 for j in range(60) if gid[j] == gid[i] and valid[j])
        assert flat[i].item() == (n < 2 or len(grp) == 1)


def test_bad_inputs_fail_loudly():
    with pytest.raises(TypeError, match="long"):
        ADVANTAGES.get("grpo")(R, G.float())
    with pytest.raises(ValueError, match="shape"):
        ADVANTAGES.get("grpo")(R, G[:3])
    with pytest.raises(ValueError, match=">= 0"):
        ADVANTAGES.get("grpo")(R, G - 1)
    with pytest.raises(ValueError, match="valid"):
        ADVANTAGES.get("grpo")(R, G, torch.ones(6))
