"""The hostile suite: programs that attack the machine, run in the real bubblewrap sandbox.

Each attack must be contained: no effect outside the sandbox (checked on the host afterwards), this process
unaffected, and, through the `code_tests` reward, a defined failure value (0.0) counted under the right outcome
while the batch goes on. Needs `bwrap` (installed by `make setup`); without it these tests fail with the install hint.
"""
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rewards import RewardSet, RewardSpec
from rewards.sandbox import Limits, Sandbox, Status

ROOT = Path(__file__).resolve().parents[2]
LIMITS = Limits(wall_s=3.0, cpu_s=1, memory_mb=256, processes=16, output_bytes=4096, file_mb=4)


@pytest.fixture(scope="module")
def sandbox():
    sb = Sandbox(limits=LIMITS, isolation="bwrap", workers=2)
    yield sb
    sb.close()


def _lingering(marker: str) -> list[int]:
    """Host pids whose command line contains `marker` (processes a program left behind)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker.encode() in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def test_infinite_loop_is_stopped_by_the_cpu_limit(sandbox):
    r = sandbox.run("while True:\n    pass\n")
    assert r.status is Status.TIMEOUT and "cpu limit" in r.detail


def test_sleep_past_the_wall_limit_is_killed(sandbox):
    marker = "orchard-sleeper-" + os.urandom(4).hex()
    r = sandbox.run(f"import time\n{marker!r}\ntime.sleep(60)\n")
    assert r.status is Status.TIMEOUT and "wall limit" in r.detail
    assert _lingering(marker) == []


def test_fork_bomb_is_bounded_and_leaves_nothing_behind(sandbox):
    marker = "orchard-forkbomb-" + os.urandom(4).hex()
    program = (f"import os, sys, time\n"
               f"for _ in range(200):\n"
               f"    try:\n"
               f"        if os.fork() == 0:\n"
               f"            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
               f"    except OSError as e:\n"
               f"        print('fork refused:', e, flush=True); break\n"
               f"time.sleep(60)\n")
    r = sandbox.run(program)
    assert "fork refused" in r.stdout  # RLIMIT_NPROC stopped it well before 200
    assert r.status is Status.TIMEOUT
    assert _lingering(marker) == []  # the pid namespace died with the sandbox
    assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True).returncode == 0  # host still forks


def test_background_child_does_not_outlive_the_program(sandbox):
    marker = "orchard-orphan-" + os.urandom(4).hex()
    program = (f"import os, sys\n"
               f"if os.fork() == 0:\n"
               f"    os.setsid()\n"
               f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
               f"print('parent done')\n")
    r = sandbox.run(program)
    assert r.status is Status.OK and "parent done" in r.stdout
    assert _lingering(marker) == []


def test_memory_bomb_is_killed(sandbox):
    r = sandbox.run("blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))\n")
    assert r.status is Status.KILLED and "memory limit" in r.detail


def test_huge_output_is_cut_and_killed(sandbox):
    r = sandbox.run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    assert r.status is Status.KILLED and "output limit" in r.detail
    assert len(r.stdout) + len(r.stderr) <= LIMITS.output_bytes


def test_huge_file_is_refused(sandbox):
    r = sandbox.run("open('/tmp/big', 'wb').write(b'x' * (64 << 20))\n")
    assert r.status in (Status.ERROR, Status.KILLED) and not r.ok


def test_writing_outside_tmp_fails_and_the_host_is_untouched(sandbox, tmp_path):
    targets = [tmp_path / "written-by-sandbox", ROOT / "written-by-sandbox", Path("/written-by-sandbox"),
               Path("/usr/lib/written-by-sandbox"), Path(sys.base_prefix) / "written-by-sandbox"]
    program = ("import sys\nfor p in sys.argv[1:] or %r:\n"
               "    try:\n        open(p, 'w').write('pwned')\n        print('WROTE', p)\n"
               "    except OSError as e:\n        print('refused', p, type(e).__name__)\n"
               "open('/tmp/ok', 'w').write('fine'); print('tmp ok')\n") % [str(t) for t in targets]
    r = sandbox.run(program)
    assert r.ok and "WROTE" not in r.stdout and "tmp ok" in r.stdout
    assert r.stdout.count("refused") == len(targets)
    for t in targets:
        assert not t.exists(), t


def test_tmp_is_private_and_thrown_away(sandbox):
    first = sandbox.run("open('/tmp/left-behind', 'w').write('x'); print('ok')")
    second = sandbox.run("import os; print(os.path.exists('/tmp/left-behind'))")
    assert first.ok and second.stdout.strip() == "False"


def test_job_files_home_and_ssh_are_invisible(sandbox, tmp_path):
    secret = tmp_path / "job-secret.txt"
    secret.write_text("job secret " + os.urandom(8).hex())
    home = Path(os.path.expanduser("~"))
    targets = [str(secret), str(ROOT / "README.md"), str(ROOT / "rewards" / "sandbox.py"), str(home / ".ssh"),
               str(home / ".bashrc"), "/work", "/etc/passwd", "/etc/shadow", str(Path.cwd())]
    program = ("import os\nfor p in %r:\n"
               "    try:\n"
               "        print('LEAKED', p, os.listdir(p) if os.path.isdir(p) else open(p).read()[:40])\n"
               "    except OSError as e:\n        print('hidden', p, type(e).__name__)\n") % targets
    r = sandbox.run(program)
    assert r.ok and "LEAKED" not in r.stdout and r.stdout.count("hidden") == len(targets), r.stdout
    assert secret.read_text() not in r.stdout


def test_environment_variables_do_not_leak(sandbox, monkeypatch):
    token = "orchard-env-secret-" + os.urandom(8).hex()
    monkeypatch.setenv("ORCHARD_TEST_SECRET", token)
    program = ("import os\nprint(dict(os.environ))\n"
               "for d in os.listdir('/proc'):\n"
               "    try:\n        print(open('/proc/%s/environ' % d, 'rb').read())\n"
               "    except OSError:\n        pass\n")
    r = sandbox.run(program, limits=Limits(output_bytes=1 << 20))
    assert r.ok and "HOME" in r.stdout  # it did print its environment
    assert token not in r.stdout and "ORCHARD_TEST_SECRET" not in r.stdout


def test_loopback_server_is_unreachable(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    accepted, done = [], threading.Event()

    def accept():
        while not done.is_set():
            try:
                accepted.append(server.accept()[0])
            except socket.timeout:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    program = ("import socket\nfor addr in [('127.0.0.1', %d), ('1.1.1.1', 80)]:\n"
               "    s = socket.socket(); s.settimeout(1)\n"
               "    try:\n        s.connect(addr); print('CONNECTED', addr)\n"
               "    except OSError as e:\n        print('refused', addr, type(e).__name__)\n") % port
    r = sandbox.run(program)
    # the server was listening and accepting all along: the host's own connection arrives
    host = socket.create_connection(("127.0.0.1", port), timeout=5)
    for _ in range(100):
        if accepted:
            break
        threading.Event().wait(0.05)
    done.set()
    t.join()
    host.close()
    server.close()
    assert r.ok and "CONNECTED" not in r.stdout and r.stdout.count("refused") == 2
    assert len(accepted) == 1  # the host's; none from the sandbox
    for c in accepted:
        c.close()


def test_no_shell_can_be_spawned(sandbox):
    program = ("import os, subprocess\n"
               "for argv in (['/bin/sh', '-c', 'id'], ['sh', '-c', 'id'], ['/usr/bin/bash', '-c', 'id']):\n"
               "    try:\n        subprocess.run(argv); print('SPAWNED', argv)\n"
               "    except OSError as e:\n        print('no shell', argv[0], type(e).__name__)\n"
               "print('system', os.system('id'))\n")
    r = sandbox.run(program)
    assert r.ok and "SPAWNED" not in r.stdout and r.stdout.count("no shell") == 3
    assert "system 0" not in r.stdout


def test_deleting_files_fails_and_the_victims_survive(sandbox, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep me")
    program = ("import os, shutil\nfor p in %r:\n"
               "    try:\n        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p); print('DELETED', p)\n"
               "    except OSError as e:\n        print('refused', p, type(e).__name__)\n"
               ) % [str(victim), str(victim / "keep.txt"), "/sandbox/program.py"]
    r = sandbox.run(program)
    assert r.ok and "DELETED" not in r.stdout
    assert (victim / "keep.txt").read_text() == "keep me"


def test_ctypes_crash_is_reported_as_a_crash(sandbox):
    r = sandbox.run("import ctypes\nctypes.string_at(0)\n")
    assert r.status is Status.CRASHED and "SIGSEGV" in r.detail


def test_runs_unprivileged(sandbox):
    r = sandbox.run("import os\nprint(os.getuid(), os.geteuid())\n"
                    "print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1])\n")
    uid, euid, caps = r.stdout.split()
    assert r.ok and uid != "0" and euid != "0" and int(caps, 16) == 0


ATTACKS = {  # completion -> the outcome it must be counted under
    "while True:\n    pass": "timeout",
    "import time\ntime.sleep(60)": "timeout",
    "import os\nwhile True:\n    os.fork()": "failed",  # the fork past RLIMIT_NPROC raises BlockingIOError
    "x = bytearray(1 << 40)": "killed",
    "print('x' * 10**7)": "killed",
    "import ctypes\nctypes.string_at(0)": "crashed",
    "open('/etc/passwd').read()": "failed",
    "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)": "failed",
    "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'id'], check=True)": "failed",
    "import shutil\nshutil.rmtree('/usr/lib')": "failed",
    "import os\nos._exit(0)": "failed",  # exiting before the tests report does not pass them
    "def f(x):\n    return x + 1": "passed",
}


def test_attacks_through_the_reward_score_zero_are_counted_and_the_job_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHARD_TEST_SECRET", "do-not-leak")
    keep = tmp_path / "keep.txt"
    keep.write_text("intact")
    cwd = os.getcwd()
    rs = RewardSet([RewardSpec(fn="code_tests", kwargs={"timeout_s": 3.0, "memory_mb": 256, "workers": 2})],
                   timeout_s=120)
    completions = list(ATTACKS)
    out = rs(["p"] * len(completions), completions, {"tests": [["assert f(1) == 2"]] * len(completions)})
    values = out.per_fn["code_tests"].tolist()
    assert values == [1.0 if o == "passed" else 0.0 for o in ATTACKS.values()]
    assert out.valid.all()
    n = len(ATTACKS)
    for outcome in ("passed", "failed", "timeout", "crashed", "killed"):
        expected = sum(o == outcome for o in ATTACKS.values()) / n
        assert out.metrics[f"reward/code_tests/sandbox/{outcome}_frac"] == pytest.approx(expected), outcome
    # this process is unaffected
    assert os.getcwd() == cwd and os.environ["ORCHARD_TEST_SECRET"] == "do-not-leak" and keep.read_text() == "intact"
    again = rs(["p"], ["def f(x):\n    return x + 1"], {"tests": [["assert f(1) == 2"]]})
    assert again.per_fn["code_tests"].tolist() == [1.0]


def test_the_program_file_is_unreadable_once_it_runs(sandbox):
    """As root the launcher reads the program, then drops to the sandbox uid: the harness (and its tokens) cannot be
    read back from the file. As another user the file stays readable (the uid does not change)."""
    r = sandbox.run("try:\n    print(len(open('/sandbox/program.py').read()))\nexcept OSError as e:\n"
                    "    print('unreadable', type(e).__name__)\n")
    assert r.ok
    if os.geteuid() == 0:
        assert r.stdout.strip() == "unreadable PermissionError"
    else:
        assert r.stdout.strip().isdigit()
