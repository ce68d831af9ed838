"""RewardSet: weights and None semantics, async functions, and every failure mode in raise and drop mode."""
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from rewards import RewardOutput, RewardSet, RewardSpec
from rl.errors import ConfigError, RewardError

USER = Path(__file__).parent / "fixtures" / "user_rewards.py"
MOD = "tests.rewards.fixtures.mod"


def user(fn: str, weight: float = 1.0, **kwargs) -> RewardSpec:
    return RewardSpec(fn=f"{USER}:{fn}", weight=weight, kwargs=kwargs)


def score(specs, completions, on_error="raise", timeout_s=0.5, **columns) -> RewardOutput:
    prompts = [f"q{i}" for i in range(len(completions))]
    return RewardSet(specs, timeout_s=timeout_s, on_error=on_error)(prompts, completions, columns)


def nan_list(t):
    return [None if math.isnan(v) else v for v in t.tolist()]


# --- weights, None, metrics -------------------------------------------------------------------------------------
def test_weighted_sum_over_file_module_and_registered_refs():
    out = score([user("contains_seven", 2.0), RewardSpec(fn=f"{MOD}:answer_length", weight=0.5),
                 RewardSpec(fn="exact_match", weight=-1.0)], ["17", "x"], answer=["17", "abcd"])
    # sample 0: 2*1 + 0.5*2 - 1*1 = 2.0; sample 1: 2*0 + 0.5*4 - 1*0 = 2.0
    assert out.rewards.tolist() == [2.0, 2.0]
    assert out.rewards.dtype.is_floating_point and out.rewards.shape == (2,)
    assert out.per_fn["answer_length"].tolist() == [2.0, 4.0]
    assert out.metrics["reward/contains_seven/mean"] == 0.5 and out.metrics["reward/answer_length/mean"] == 3.0
    assert out.valid.tolist() == [True, True] and out.metrics["reward/dropped"] == 0.0
    assert out.metrics["reward/time_s"] >= 0 and "reward/exact_match/time_s" in out.metrics


def test_none_means_not_applicable_for_that_function_only():
    out = score([user("only_answers", 3.0), RewardSpec(fn="exact_match")], ["5", "6"], answer=["skip", "6"])
    # sample 0: only_answers None (contributes 0) + exact_match 0 = 0; sample 1: 3*1 + 1 = 4
    assert out.rewards.tolist() == [0.0, 4.0]
    assert nan_list(out.per_fn["only_answers"]) == [None, 1.0]
    assert out.metrics["reward/none_frac/only_answers"] == 0.5 and out.metrics["reward/none_frac/exact_match"] == 0.0
    assert out.metrics["reward/only_answers/mean"] == 1.0  # over applicable samples only
    assert out.metrics["reward/all_none"] == 0.0 and out.valid.all()


def test_all_none_gives_zero_and_is_counted():
    out = score([user("only_answers"), user("always_none")], ["a", "b", "c"], answer=["skip", "1", "skip"])
    assert out.rewards.tolist() == [0.0, 1.0, 0.0]
    assert out.metrics["reward/all_none"] == 2.0 and out.valid.all()
    assert math.isnan(out.metrics["reward/always_none/mean"]) and out.metrics["reward/none_frac/always_none"] == 1.0


def test_duplicate_functions_get_unique_names_and_kwargs_bind():
    out = score([RewardSpec(fn="format", kwargs={"pattern": r"\d+"}),
                 RewardSpec(fn="format", weight=0.5, kwargs={"pattern": r"[a-z]+"}),
                 user("longer_than", min_len=2, bonus=4.0)], ["12", "abc"])
    # "12": 1 + 0 + 0 = 1; "abc": 0 + 0.5 + 4 = 4.5
    assert list(out.per_fn) == ["format", "format_2", "longer_than"]
    assert out.rewards.tolist() == [1.0, 4.5]


def test_numpy_and_bool_values_are_numbers():
    out = score([user("mixed_scalars"), user("numpy_array")], ["a", "b", "c"])
    assert out.per_fn["mixed_scalars"].tolist() == [1.0, 0.5, 2.0]
    assert out.rewards.tolist() == [1.25, 0.75, 2.25]


# --- construction and batch checks --------------------------------------------------------------------------------
def test_construction_errors():
    with pytest.raises(ConfigError, match="on_reward_error must be 'raise' or 'drop', got 'skip'"):
        RewardSet([RewardSpec(fn="exact_match")], on_error="skip")
    with pytest.raises(ConfigError, match="no reward functions configured"):
        RewardSet([])
    with pytest.raises(ConfigError, match="reward_timeout_s must be > 0"):
        RewardSet([RewardSpec(fn="exact_match")], timeout_s=0)
    # a non-finite weight is refused by the spec itself (in a job config as `reward.0.weight`: test_config.py)
    with pytest.raises(ValidationError, match=r"weight\n.*finite number"):
        RewardSpec(fn="exact_match", weight=math.nan)
    with pytest.raises(ConfigError, match=r"unknown kwarg 'min_length' \(did you mean 'min_len'\?\)"):
        RewardSet([user("longer_than", min_length=3)])
    with pytest.raises(ConfigError, match="reward 'positional_only' cannot take prompts and completions"):
        RewardSet([user("positional_only")])


def test_missing_column_and_clashing_kwarg_raise_in_both_modes():
    for mode in ("raise", "drop"):
        with pytest.raises(RewardError, match=r"reward 'exact_match' needs 'answer'.*batch's columns: solution"):
            score([RewardSpec(fn="exact_match")], ["1"], on_error=mode, solution=["1"])
        with pytest.raises(RewardError, match=r"reward 'longer_than': config kwarg 'min_len' has the same name as a "
                                              r"dataset column"):
            score([user("longer_than", min_len=1)], ["1"], on_error=mode, min_len=[3])


def test_caller_batch_mismatch_is_a_value_error():
    rs = RewardSet([RewardSpec(fn="exact_match")])
    with pytest.raises(ValueError, match="dataset column 'answer' has 1 values for 2 completions"):
        rs(["p", "p"], ["a", "b"], {"answer": ["a"]})
    with pytest.raises(ValueError, match="1 prompts for 2 completions"):
        rs(["p"], ["a", "b"], {"answer": ["a", "b"]})


# --- a function that raises ---------------------------------------------------------------------------------------
def test_raise_names_function_exception_and_sample():
    with pytest.raises(RewardError, match=r"^reward 'raises_on_x' raised ValueError: cannot score x on sample 1 "
                                          r"\(prompt='q1', completion='x'\)$") as info:
        score([user("raises_on_x")], ["ok", "x", "x"])
    assert isinstance(info.value.__cause__, ValueError)  # the user's traceback is kept


def test_raise_message_truncates_long_texts():
    with pytest.raises(RewardError) as info:
        score([user("raises_on_x")], ["x" + "y" * 1000])
    msg = str(info.value)
    assert "completion='xyyy" in msg and "...)" in msg and len(msg) < 300


def test_drop_mode_drops_only_the_samples_that_raise():
    out = score([user("raises_on_x"), RewardSpec(fn="exact_match", weight=2.0)], ["1", "x", "2"], on_error="drop",
                answer=["1", "x", "3"])
    assert out.valid.tolist() == [True, False, True]
    assert nan_list(out.rewards) == [3.0, None, 1.0]  # never a silent 0: NaN and valid=False
    assert nan_list(out.per_fn["raises_on_x"]) == [1.0, None, 1.0]
    assert out.per_fn["exact_match"].tolist() == [1.0, 1.0, 0.0]  # other functions still scored it
    assert out.metrics["reward/dropped"] == 1.0 and out.metrics["reward/raises_on_x/dropped"] == 1.0
    assert out.metrics["reward/none_frac/raises_on_x"] == 0.0  # a failure is not "not applicable"


def test_drop_mode_logs_the_first_failure(caplog):
    score([user("raises_on_x")], ["1", "x", "x"], on_error="drop")
    assert ("2 of 3 samples dropped (on_reward_error=drop); the first: reward 'raises_on_x' raised ValueError: "
            "cannot score x on sample 1 (prompt='q1', completion='x')") in caplog.text


def test_drop_mode_raises_when_a_function_fails_on_every_sample():
    with pytest.raises(RewardError, match=r"reward 'raises_always' failed on all 2 samples of the batch"):
        score([user("raises_always")], ["a", "b"], on_error="drop")


def test_failing_on_the_batch_but_on_no_single_sample_raises_in_both_modes():
    for mode in ("raise", "drop"):
        with pytest.raises(RewardError, match=r"reward 'raises_on_batches' raised RuntimeError: only scores one at a "
                                              r"time on the batch of 2 completions but on no single one"):
            score([user("raises_on_batches")], ["a", "b"], on_error=mode)


# --- wrong length or type: programming errors, always raised -----------------------------------------------------
@pytest.mark.parametrize("mode", ["raise", "drop"])
@pytest.mark.parametrize("fn, message", [
    ("wrong_length", r"^reward 'wrong_length' returned 1 values, expected 3 \(one per completion\)$"),
    ("returns_str", r"^reward 'returns_str' returned a str; expected a list of 3 floats or None"),
    ("returns_dict", r"^reward 'returns_dict' returned a dict; expected a list of 3 floats or None"),
    ("element_str", r"^reward 'element_str' returned a str \('0.5'\) at index 1; expected a float or None "
                    r"\(prompt='q1', completion='b'\)$"),
])
def test_wrong_length_or_type_always_raises(fn, message, mode):
    with pytest.raises(RewardError, match=message):
        score([user(fn)], ["a", "b", "c"], on_error=mode)


# --- NaN / inf ----------------------------------------------------------------------------------------------------
def test_nan_and_inf_raise_naming_function_and_sample():
    with pytest.raises(RewardError, match=r"^reward 'nan_on_x' returned nan for sample 1 \(prompt='q1', "
                                          r"completion='x'\)$"):
        score([user("nan_on_x")], ["1", "x"])
    with pytest.raises(RewardError, match=r"^reward 'inf_on_x' returned inf for sample 0"):
        score([user("inf_on_x")], ["x", "1"])


def test_nan_found_while_isolating_an_exception_is_checked_too():
    with pytest.raises(RewardError, match=r"^reward 'nan_alone_raises_in_batch' returned nan for sample 1 "):
        score([user("nan_alone_raises_in_batch")], ["a", "n", "b"])
    out = score([user("nan_alone_raises_in_batch")], ["a", "n", "b"], on_error="drop")
    assert out.valid.tolist() == [True, False, True]


def test_nan_in_drop_mode_drops_that_sample():
    out = score([user("nan_on_x", 2.0)], ["1", "x", "2"], on_error="drop")
    assert out.valid.tolist() == [True, False, True]
    assert nan_list(out.rewards) == [2.0, None, 2.0]
    assert out.metrics["reward/dropped"] == 1.0 and out.metrics["reward/nan_on_x/dropped"] == 1.0
    with pytest.raises(RewardError, match="reward 'nan_always' failed on all 2 samples"):
        score([user("nan_always")], ["1", "2"], on_error="drop")


# --- timeouts -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["raise", "drop"])
def test_timeout_always_raises_naming_function_and_timeout(mode):
    with pytest.raises(RewardError, match=r"^reward 'hangs' did not return within reward_timeout_s=0.5 s"):
        score([user("hangs")], ["1"], on_error=mode, timeout_s=0.5)


# --- async --------------------------------------------------------------------------------------------------------
def test_async_functions_work_beside_sync_ones():
    out = score([user("async_len", 0.5), user("contains_seven"), user("async_scorer")], ["7", "abcd"])
    # "7": 0.5*1 + 1 + 3 = 4.5; "abcd": 0.5*4 + 0 + 3 = 5.0
    assert out.rewards.tolist() == [4.5, 5.0]
    assert list(out.per_fn) == ["async_len", "contains_seven", "async_scorer"]


def test_async_functions_run_concurrently():
    """ping waits for pong's signal and vice versa: run one after the other, both would time out."""
    out = score([user("ping"), user("pong")], ["a", "b"], timeout_s=0.5)
    assert out.rewards.tolist() == [3.0, 3.0]


def test_async_raise_and_drop():
    with pytest.raises(RewardError, match=r"reward 'async_raises_on_x' raised ValueError: async cannot score x on "
                                          r"sample 2 \(prompt='q2', completion='x'\)"):
        score([user("async_raises_on_x")], ["a", "b", "x"])
    out = score([user("async_raises_on_x")], ["a", "x", "b"], on_error="drop")
    assert out.valid.tolist() == [True, False, True] and out.metrics["reward/dropped"] == 1.0


def test_async_timeouts_raise():
    with pytest.raises(RewardError, match=r"^reward 'async_hangs' did not return within reward_timeout_s=0.5 s"):
        score([user("async_hangs"), user("async_len")], ["a"], on_error="drop")
    with pytest.raises(RewardError, match=r"^reward 'async_blocks_loop' did not return within reward_timeout_s=0.3"):
        score([user("async_blocks_loop")], ["a"], timeout_s=0.3)
