"""`rl bench sync` on one tiny model: both transports publish through the real controller to a Ray worker, every
version is verified by the probe check (exact on one machine), and the report compares them side by side."""
import json
import math

import pytest

from rl.cli import main


@pytest.mark.slow
def test_bench_sync_tiny(tmp_path):
    assert main(["bench", "sync", "--models", "random-3m", "--workers", "1", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "sync.json").read_text())["rows"]
    assert [r["transport"] for r in rows] == ["object_store", "broadcast"]
    assert rows[1]["backend"] == "gloo" and rows[0]["trainer_s_vs_first"] == 1.0
    for r in rows:
        assert r["probe_max_abs_err"] == 0.0 and r["tensors"] > 0, r
        assert all(math.isfinite(r[k]) for k in ("trainer_s", "verified_s", "verified_s_vs_first")), r
    assert "| random-3m |" in (tmp_path / "sync.md").read_text()
