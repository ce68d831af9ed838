"""`rl bench async` end to end on a tiny budget (real Ray, real training): the report's structure and the
invariants that hold whatever the machine's speed; no timing thresholds."""
import json

import pytest

from rl.cli import main

pytestmark = pytest.mark.slow

TINY = ["model.path=random-3m", "reward=[exact_match, {fn: length_penalty, kwargs: {target: 1, scale: 4}}]",
        "data.train_size=64", "data.eval_size=8", "rollout.prompts_per_step=4", "rollout.num_generations=4",
        "rollout.max_new_tokens=4", "eval.max_new_tokens=4", "trainer.lr=1e-3"]


def test_bench_async_report_and_replay(tmp_path):
    out = tmp_path / "out"
    assert main(["bench", "async", "--steps", "4", "--staleness", "1", "--workers", "1,2", "--ranks", "1,2",
                 "--trainer-ranks", "2", "--project-staleness", "1", "--out", str(out), "--overrides", *TINY]) == 0
    rep = json.loads((out / "async.json").read_text())
    rows = {(r["trainer_ranks"], r["max_staleness"]): r for r in rep["rows"]}
    assert list(rows) == [(1, 0), (1, 1), (2, 0), (2, 1)]  # the synchronous 1-rank baseline is always measured
    assert rows[(1, 0)]["speedup"] == 1.0 and rows[(1, 0)]["staleness_max"] == rows[(2, 0)]["staleness_max"] == 0
    assert rows[(1, 1)]["staleness_max"] <= 1 and rows[(2, 1)]["staleness_max"] <= 1
    for r in rows.values():
        assert r["samples_per_s"] > 0 and 0 <= r["trainer_idle_frac"] <= 1 and 0 <= r["worker_idle_frac"] <= 1
        assert r["train_s"] > 0
    cal = rep["calibration"]
    assert cal["gen_s"] > 0 and cal["train_s"] > 0
    # measured data-parallel efficiency: 1-rank training step time over 2 x the 2-rank one
    assert cal["dp_efficiency_ranks"] == 2
    assert cal["dp_efficiency"] == pytest.approx(rows[(1, 0)]["train_s"] / (2 * rows[(2, 0)]["train_s"]))
    assert "efficiency" in (out / "async.md").read_text() and "measured)" in (out / "async.md").read_text()
    assert [(c["trainer_ranks"], c["max_staleness"]) for c in rep["simulator_check"]] == list(rows)
    assert [p["trainer_ranks"] for p in rep["projection"]] == [1, 2]
    assert set(rep["projection"][0]) == {"trainer_ranks", "M=1", "M=2"}
    assert rep["overlap_bound"] >= 1.0
    assert "Simulator vs measured" in (out / "async.md").read_text()
    # replay: the same measurements, a bigger projection grid, no training
    out2 = tmp_path / "out2"
    assert main(["bench", "async", "--replay", str(out / "async.json"), "--workers", "1,2,4", "--ranks", "1,2,4",
                 "--out", str(out2)]) == 0
    rep2 = json.loads((out2 / "async.json").read_text())
    assert rep2["rows"] == rep["rows"] and rep2["simulator_check"] == rep["simulator_check"]
    assert rep2["calibration"] == rep["calibration"]
    assert len(rep2["projection"]) == 3 and "M=4" in rep2["projection"][0]
    # (how the projection grows with ranks follows the measured data-parallel efficiency, a timing: not asserted)
    assert all(0 < p[f"M={m}"] < float("inf") for p in rep2["projection"] for m in (1, 2, 4))
