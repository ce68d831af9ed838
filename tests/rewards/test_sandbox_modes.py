"""Choosing the isolation: bwrap or nothing unless the weaker rlimits-only mode is asked for by name."""
import logging

import pytest

from rewards.sandbox import Limits, Sandbox, SandboxUnavailable, Status, resolve_isolation


def test_without_bwrap_untrusted_code_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no bwrap
    monkeypatch.delenv("ORCHARD_SANDBOX", raising=False)
    with pytest.raises(SandboxUnavailable) as e:
        Sandbox()
    msg = str(e.value)
    assert "bwrap" in msg and "apt-get install -y bubblewrap" in msg and "isolation='rlimits_only'" in msg
    assert "ORCHARD_SANDBOX=rlimits_only" in msg


def test_isolation_is_chosen_by_name(monkeypatch):
    monkeypatch.delenv("ORCHARD_SANDBOX", raising=False)
    assert resolve_isolation(None) == "bwrap"
    monkeypatch.setenv("ORCHARD_SANDBOX", "rlimits_only")
    assert resolve_isolation(None) == "rlimits_only"
    assert resolve_isolation("bwrap") == "bwrap"  # an explicit argument wins
    with pytest.raises(ValueError, match="must be one of bwrap, rlimits_only, got 'none'"):
        resolve_isolation("none")


def test_rlimits_only_is_an_opt_in_with_a_warning_and_still_enforces_limits(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # works without bwrap
    with caplog.at_level(logging.WARNING, logger="rewards.sandbox"):
        sb = Sandbox(limits=Limits(wall_s=2.0, cpu_s=1, memory_mb=256, output_bytes=4096), isolation="rlimits_only")
    assert any("WITHOUT namespace isolation" in r.getMessage() for r in caplog.records)
    assert sb.run("print(input()[::-1])", stdin="abc\n").stdout == "cba\n"
    assert sb.run("while True:\n    pass").status is Status.TIMEOUT
    assert sb.run("import time\ntime.sleep(30)").status is Status.TIMEOUT
    assert sb.run("x = bytearray(1 << 40)").status is Status.KILLED
    assert sb.run("print('x' * 10**6)").status is Status.KILLED
    assert sb.run("import ctypes\nctypes.string_at(0)").status is Status.CRASHED


def test_rlimits_only_really_is_weaker(tmp_path, monkeypatch):
    """What the warning says is true: without namespaces the program can read your files and environment (so the
    default refuses)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("visible")
    sb = Sandbox(isolation="rlimits_only")
    r = sb.run(f"print(open({str(secret)!r}).read())")
    assert r.ok and r.stdout.strip() == "visible"
    assert sb.run("import os; print(sorted(os.environ))").stdout.strip() == "['HOME', 'LANG']"  # env still cleared


def test_parallel_map_keeps_order(tmp_path):
    sb = Sandbox(workers=2)
    try:
        rs = sb.map([f"print({i} * {i})" for i in range(8)], stdins=None)
    finally:
        sb.close()
    assert [r.stdout.strip() for r in rs] == [str(i * i) for i in range(8)]
    with pytest.raises(ValueError, match="2 stdins for 1 programs"):
        sb.map(["print(1)"], ["", ""])


def test_limits_are_checked():
    with pytest.raises(ValueError, match="sandbox limit wall_s must be > 0"):
        Limits(wall_s=0)
