"""`rl bench checkpointing` on random-3m: both settings run in their own child process, report a peak RSS and a time
per update, and train identically (the same losses with and without checkpointing)."""
import json

import pytest

from rl.cli import main


@pytest.mark.slow
def test_bench_checkpointing_tiny(tmp_path):
    assert main(["bench", "checkpointing", "--model", "random-3m", "--batch", "4", "--micro-batch", "2",
                 "--prompt-len", "8", "--completion-len", "16", "--steps", "2", "--threads", "1",
                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "checkpointing.json").read_text())
    off, on = report["runs"]
    assert (off["gradient_checkpointing"], on["gradient_checkpointing"]) == (False, True)
    assert on["loss_pg"] == pytest.approx(off["loss_pg"], rel=1e-5, abs=1e-7) and len(on["loss_pg"]) == 2
    assert all(r["peak_rss_mib"] > 100 and r["s_per_update"] > 0 for r in (off, on))
    assert "| True |" in (tmp_path / "checkpointing.md").read_text()
