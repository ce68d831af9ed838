"""`rl bench rollout` on a tiny cell (the report's shape), and the child runner every bench uses: a child that
never finishes is stopped at --timeout, a failing one is reported with its output, both naming the child."""
import json
import sys

import pytest

from rl.bench.common import run_child
from rl.cli import main


def test_bench_rollout_tiny_cell(tmp_path):
    assert main(["bench", "rollout", "--sizes", "3m", "--engines", "hf", "--prompts", "2", "--new-tokens", "2",
                 "--repeats", "1", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "rollout.json").read_text())["rows"]
    assert row["engine"] == "hf" and row["tokens_per_s"] > 0 and 0 < row["fraction_of_bound"]


def test_run_child_stops_a_child_that_never_finishes_and_names_a_failing_one():
    never = [sys.executable, "-c", "import threading; threading.Event().wait()"]  # waits forever, no timing race
    with pytest.raises(RuntimeError, match=r"^hf 3m did not finish within --timeout 1 s"):
        run_child(never, label="hf 3m", timeout=1)
    with pytest.raises(RuntimeError, match=r"(?s)^cell failed \(exit code 3\):.*boom"):
        run_child([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"], label="cell",
                  timeout=60)
    assert run_child([sys.executable, "-c", "print('ok')"], label="cell", timeout=60).stdout == "ok\n"
