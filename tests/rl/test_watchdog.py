"""rl/watchdog.py: a child without CPU progress is killed and rerun; a busy or finished child is left alone."""
import sys

import pytest

from rl.watchdog import StalledError, run_watched


def test_a_sleeping_child_is_killed_and_rerun_then_reported(capsys):
    with pytest.raises(StalledError, match="stalled 2 times"):
        run_watched([sys.executable, "-c", "import time; time.sleep(60)"], label="sleeper", stall_s=3, retries=1)
    assert capsys.readouterr().err.count("sleeper: no CPU progress for 3 s") == 2


def test_a_busy_child_is_left_to_finish_and_its_output_comes_back():
    # a fixed amount of CPU work (2 CPU-seconds), whatever the wall time it takes on a loaded machine
    busy = "import time\nwhile time.process_time() < 2: pass\nprint('done')"
    w = run_watched([sys.executable, "-c", busy], label="busy", stall_s=30, retries=0)
    assert (w.returncode, w.output.strip(), w.stalls) == (0, "done", 0)


def test_a_failing_child_returns_its_exit_code():
    w = run_watched([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], label="fail", stall_s=30)
    assert (w.returncode, w.output.strip()) == (3, "boom")
