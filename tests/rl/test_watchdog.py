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


def test_a_child_sees_it_is_watched():
    w = run_watched([sys.executable, "-c", "import os; print(os.environ['ORCHARD_WATCHED'])"], label="env", stall_s=30)
    assert w.output.strip() == "1"


@pytest.mark.slow
def test_rl_train_marl_job_stopped_mid_run_is_resumed_from_its_checkpoint(tmp_path):
    """A real IPPO job, frozen with SIGSTOP after its first checkpoint (what an XLA:CPU deadlock looks like: no
    CPU progress): `rl train` kills it and finishes the run with --resume."""
    import os
    import signal
    import subprocess
    import time

    import psutil

    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "ORCHARD_WATCHED"}
    env.update(ORCHARD_STALL_S="6", TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "rl.cli", "train", "configs/ippo_mpe_spread.yaml", "total_timesteps=25600",
           "env.num_envs=4", "num_steps=32", "num_seeds=1", "segment_updates=4", "checkpoint.every=20",
           "checkpoint.keep=2", "eval_envs=4", "log.progress=false", "log.tensorboard=false", f"run_dir={run_dir}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        while not (run_dir / "checkpoints" / "step-20" / "COMPLETE").exists():  # a hang here: pytest-timeout
            assert proc.poll() is None, "the job ended before its first checkpoint"
            time.sleep(0.05)
        (job,) = [c for c in psutil.Process(proc.pid).children() if "rl.cli" in " ".join(c.cmdline())]
        job.send_signal(signal.SIGSTOP)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "no CPU progress for 6 s" in out and "finished after 1 restart(s)" in out, out[-3000:]
    assert "resumed from" in out  # the second child continued from a checkpoint, not from scratch
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["updates"] == 200 and (run_dir / "checkpoints" / "step-200" / "COMPLETE").exists()
    assert summary["stall_restarts"] == 1  # the rerun count the watching `rl train` adds to the job's summary
