"""`rl bench grpo`'s run order and summary (pure functions; the bench itself needs TRL and minutes)."""
import pytest

from rl.bench.grpo import interleaved, summarise


def test_interleaved_reverses_the_order_on_every_other_seed():
    assert interleaved(["a", "b", "c"], [0, 1, 2]) == [(0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"), (1, "a"),
                                                       (2, "a"), (2, "b"), (2, "c")]


def _run(step_s, gen=None, train=None, sync=None, acc=None):
    out = {"step_s": step_s, "reward": [0.5, 1.0], "accuracy_after": acc}
    if gen is not None:
        n = len(step_s)
        out["parts"] = {"gen_s": [gen] * n, "train_s": [train] * n, "sync_s": [sync] * n}
    return out


def test_summarise_ratios_and_bounds_by_hand():
    # medians skip each run's first step; then the median over seeds
    runs = {"trl": [_run([9.0, 1.0, 1.2], acc=0.9), _run([9.0, 1.0, 1.0], acc=0.8)],
            "orchard-local": [_run([5.0, 0.8, 0.8], 0.2, 0.55, 0.05, acc=1.0)],
            "orchard-ray": [_run([5.0, 0.84, 0.84], 0.25, 0.55, 0.04, acc=1.0)],
            "orchard-async1": [_run([5.0, 0.7, 0.7], 0.01, 0.65, 0.04, acc=0.5)]}
    rows = {r["variant"]: r for r in summarise("default", runs)}
    trl = (1.1 + 1.0) / 2
    assert rows["trl"]["s_per_step"] == pytest.approx(trl)
    assert rows["trl"]["vs_trl"] == pytest.approx(1.0) and "bound" not in rows["trl"]
    assert rows["trl"]["heldout_acc_after"] == pytest.approx(0.85)
    assert rows["orchard-local"]["vs_trl"] == pytest.approx(trl / 0.8)
    # the Ray sync step against the local run's sum of parts, 0.2 + 0.55 + 0.05 = 0.8
    assert rows["orchard-ray"]["bound"] == "sum of parts of orchard-local"
    assert rows["orchard-ray"]["step_vs_bound"] == pytest.approx(0.84 / 0.8)
    assert rows["orchard-ray"]["bound_vs_trl"] == pytest.approx(trl / 0.8)
    # the asynchronous step against the overlap bound, training + publish of the local run, 0.6
    assert rows["orchard-async1"]["bound"] == "overlap of orchard-local"
    assert rows["orchard-async1"]["bound_vs_trl"] == pytest.approx(trl / 0.6)
    assert rows["orchard-async1"]["step_vs_bound"] == pytest.approx(0.7 / 0.6)
    assert rows["orchard-async1"]["train_s"] == pytest.approx(0.65)
    assert rows["orchard-async1"]["reward_last5"] == pytest.approx(0.75)
