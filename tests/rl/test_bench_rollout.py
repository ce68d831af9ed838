"""`rl bench rollout` on a tiny cell: the report's shape, and a cell past --timeout becomes an error row."""
import json

from rl.cli import main


def test_bench_rollout_tiny_cell_and_timeout(tmp_path):
    args = ["bench", "rollout", "--sizes", "3m", "--engines", "hf", "--prompts", "2", "--new-tokens", "2",
            "--repeats", "1"]
    assert main([*args, "--out", str(tmp_path / "ok")]) == 0
    (row,) = json.loads((tmp_path / "ok" / "rollout.json").read_text())["rows"]
    assert row["engine"] == "hf" and row["tokens_per_s"] > 0 and 0 < row["fraction_of_bound"]
    assert main([*args, "--timeout", "0.01", "--out", str(tmp_path / "slow")]) == 0
    (row,) = json.loads((tmp_path / "slow" / "rollout.json").read_text())["rows"]
    assert row == {"engine": "hf", "size": "3m", "error": "timed out after --timeout 0.01 s"}
