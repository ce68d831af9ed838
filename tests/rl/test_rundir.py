"""Run directory: atomic checkpoints never leave partial state; metrics round-trip and truncate on resume."""
import json

import pytest

from rl.rundir import RunDir, atomic_write_text


def test_checkpoint_is_atomic_and_old_ones_survive_a_failed_write(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.checkpoint_writer(1) as d:
        (d / "weights").write_text("one")
    with pytest.raises(RuntimeError):
        with run.checkpoint_writer(2) as d:
            (d / "weights").write_text("half")
            raise RuntimeError("disk full")
    assert [s for s, _ in run.checkpoints()] == [1]
    assert (run.latest_checkpoint()[1] / "weights").read_text() == "one"
    assert not [p for p in run.ckpt_root.iterdir() if p.name.startswith(".tmp")]


def test_incomplete_dirs_are_ignored_and_keep_prunes(tmp_path):
    run = RunDir(tmp_path)
    (run.ckpt_root / "step-9").mkdir(parents=True)  # no COMPLETE marker: a crash mid-write by an older version
    for s in (1, 2, 3):
        with run.checkpoint_writer(s, keep=2) as d:
            (d / "x").write_text(str(s))
    assert [s for s, _ in run.checkpoints()] == [2, 3]


def test_resaving_same_step_replaces_it(tmp_path):
    run = RunDir(tmp_path)
    for text in ("a", "b"):
        with run.checkpoint_writer(5) as d:
            (d / "x").write_text(text)
    assert (run.latest_checkpoint()[1] / "x").read_text() == "b"


def test_metrics_roundtrip_and_truncate(tmp_path):
    run = RunDir(tmp_path)
    for s in range(1, 5):
        run.log_metrics(s, {"reward/mean": s / 10, "nan": float("nan")}, tensorboard=False)
    run.close()
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3, 4]
    assert run.read_metrics()[0]["nan"] is None  # NaN becomes null, the file stays valid JSON lines
    run.truncate_metrics(2)
    assert [r["step"] for r in run.read_metrics()] == [1, 2]


def test_atomic_write_text(tmp_path):
    atomic_write_text(tmp_path / "a" / "s.json", json.dumps({"x": 1}))
    assert json.loads((tmp_path / "a" / "s.json").read_text()) == {"x": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["s.json"]


def test_clear_partial_drops_what_an_attempt_left_before_its_first_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    run.log_metrics(1, {"x": 1.0}, tensorboard=False)
    run.close()
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events").write_text("e")
    (tmp_path / "checkpoints" / ".tmp-step-2-99").mkdir(parents=True)
    (tmp_path / "config.yaml").write_text("algo: ippo\n")
    run.clear_partial()
    assert not run.metrics_path.exists() and not (tmp_path / "tb").exists()
    assert not list((tmp_path / "checkpoints").iterdir()) and (tmp_path / "config.yaml").exists()
