"""`rl bench sync` LoRA rows on one tiny model: merged weights against the adapter alone, both verified by the probe
check, the adapter row shipping a small fraction of the bytes."""
import json

import pytest

from rl.cli import main


@pytest.mark.slow
def test_bench_sync_lora_rows_tiny(tmp_path):
    assert main(["bench", "sync", "--models", "random-3m", "--workers", "1", "--repeats", "1",
                 "--transports", "lora_merged,lora_adapter", "--out", str(tmp_path)]) == 0
    merged, adapter = json.loads((tmp_path / "sync.json").read_text())["rows"]
    assert (merged["transport"], adapter["transport"]) == ("lora_merged", "lora_adapter")
    assert merged["sync_mb"] == pytest.approx(merged["weights_mb"]) and 0 < adapter["sync_mb"] * 10 < merged["sync_mb"]
    assert all(r["probe_max_abs_err"] < 1e-4 and r["tensors"] > 0 for r in (merged, adapter))
