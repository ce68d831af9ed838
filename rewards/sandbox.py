"""Run untrusted Python (code a model wrote) in a bubblewrap sandbox with resource limits.

`Sandbox.run(program, stdin)` executes one program in a fresh `bwrap` sandbox (Debian's `bubblewrap`, the
sandbox Flatpak uses) and returns an `ExecResult`; `Sandbox.map` runs many at once on a bounded thread pool (each
thread waits on its own child process). What the program gets (isolation="bwrap"):
- no network: a new network namespace holds only its own loopback device;
- a read-only view of just what the interpreter needs: /usr/lib*, the loader cache, the Python installation
  (`sys.base_prefix`) and the interpreter; nothing else of the machine: not the job's files, not /work, /root,
  $HOME or the repository (so no shell, no setuid tool: there is no /usr/bin, and every mount is nosuid);
- a private writable /tmp (a tmpfs of `Limits.file_mb`), thrown away with the sandbox; `/` is read-only;
- an empty environment (the job's variables never reach it), new pid/ipc/uts/cgroup namespaces, its own session;
- as root, its own unprivileged uid (no capabilities; see `_slot_uid`); otherwise the caller's uid in a user
  namespace;
- rlimits set inside the sandbox before the program starts: CPU seconds, address space, processes, file size,
  open files, no core dumps; and from outside: a wall-clock limit and an output cap (stdout + stderr), both
  enforced by killing the whole process group (bwrap's pid namespace dies with it, taking every process inside).

Where `bwrap` is missing (or cannot create namespaces) `Sandbox` raises `SandboxUnavailable` saying how to install
it, unless the caller opts into isolation="rlimits_only" by name (or ORCHARD_SANDBOX=rlimits_only), which logs a
warning: the same limits, but the program runs as your user with your filesystem and network, so it is only for
code you would run anyway. As root in that mode the process limit does not apply (the kernel exempts root).

Outcomes (`Status`): ok (exit 0), error (non-zero exit: an exception, a failed assert), timeout (wall or CPU
limit), killed (stopped for another limit: output size, memory, file size), crashed (died of a signal it was not
sent by a limit, e.g. SIGSEGV from ctypes). A sandbox that fails to start raises `SandboxError`; it is never
reported as the program's failure.
"""
from __future__ import annotations

import logging
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from rl.errors import OrchardError

log = logging.getLogger(__name__)

ISOLATIONS = ("bwrap", "rlimits_only")
INSTALL_HINT = ("install bubblewrap: `apt-get install -y bubblewrap` as root on Debian/Ubuntu (`make setup` does it "
                "when run as root), `dnf install bubblewrap` on Fedora; or opt into the weaker mode by name: "
                "isolation='rlimits_only' in the reward's kwargs or ORCHARD_SANDBOX=rlimits_only (resource limits only: "
                "the code then runs as you, with your files and network)")


class SandboxUnavailable(OrchardError):
    """The requested isolation cannot be provided on this machine (bwrap missing or unable to create namespaces)."""


class SandboxError(OrchardError):
    """The sandbox itself failed (not the program inside it): bwrap could not set up, or the launcher broke."""


class Status(str, Enum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    KILLED = "killed"
    CRASHED = "crashed"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one execution."""
    wall_s: float = 5.0
    """Wall-clock seconds before the whole sandbox is killed (status timeout)."""
    cpu_s: int = 2
    """CPU seconds (RLIMIT_CPU: SIGXCPU at the limit, SIGKILL a second later; status timeout)."""
    memory_mb: int = 512
    """Address space in MiB (RLIMIT_AS); Python raises MemoryError past it (status killed)."""
    processes: int = 16
    """Processes and threads of the sandbox's uid (RLIMIT_NPROC); a fork past it fails with EAGAIN."""
    output_bytes: int = 64 * 1024
    """stdout + stderr bytes kept; more kills the sandbox (status killed)."""
    file_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE) and the size of its /tmp."""
    open_files: int = 64
    """Open file descriptors (RLIMIT_NOFILE)."""

    def __post_init__(self):
        for name in ("wall_s", "cpu_s", "memory_mb", "processes", "output_bytes", "file_mb", "open_files"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sandbox limit {name} must be > 0, got {getattr(self, name)!r}")


@dataclass
class ExecResult:
    """What one execution did. `exit_code` is None when it died of a signal or was killed."""
    status: Status
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    detail: str  # why, in words: "exit 1: ValueError: ...", "wall limit 5 s", "signal SIGSEGV", ...

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


# Runs inside the sandbox as `python -I -S -B -c _LAUNCHER program_path limits uid`: reads the program, sets
# the rlimits (before dropping root, so the hard limits cannot be raised again), drops to `uid` when it is root,
# and executes the program as __main__ in a fresh namespace (one interpreter start per execution).
_LAUNCHER = r"""
import os, resource as R, sys
def _boot():
    path, uid = sys.argv[1], int(sys.argv[3])
    cpu, mem, nproc, fsize, nofile = (int(x) for x in sys.argv[2].split(","))
    with open(path) as f:
        src = f.read()
    for k, v in ((R.RLIMIT_CPU, (cpu, cpu + 1)), (R.RLIMIT_AS, (mem, mem)), (R.RLIMIT_NPROC, (nproc, nproc)),
                 (R.RLIMIT_FSIZE, (fsize, fsize)), (R.RLIMIT_NOFILE, (nofile, nofile)), (R.RLIMIT_CORE, (0, 0))):
        R.setrlimit(k, v)
    if uid >= 0 and os.getuid() == 0:
        os.setgroups([]); os.setgid(uid); os.setuid(uid)
    del sys.argv[1:]
    sys.argv[0] = "program.py"
    return compile(src, "program.py", "exec")
_code = _boot()
del _boot
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
"""

_SLOT_LOCK = threading.Lock()
_SLOTS_USED: set[int] = set()
SANDBOX_UID_BASE = 1_000_000
"""As root, execution slot s of process p runs as uid SANDBOX_UID_BASE + (p % 4096) * 256 + s: an unprivileged uid
of its own, so RLIMIT_NPROC (which the kernel counts per uid and does not apply to root) bounds each execution
separately: one fork bomb cannot starve another execution running at the same time."""


def _acquire_slot() -> int:
    with _SLOT_LOCK:
        s = 0
        while s in _SLOTS_USED:
            s += 1
        if s >= 256:
            raise SandboxError("more than 256 sandboxed executions at once in one process")
        _SLOTS_USED.add(s)
        return s


def _release_slot(s: int) -> None:
    with _SLOT_LOCK:
        _SLOTS_USED.discard(s)


def _slot_uid(slot: int) -> int:
    return SANDBOX_UID_BASE + (os.getpid() % 4096) * 256 + slot


def resolve_isolation(isolation: str | None) -> str:
    """The isolation to use: the argument, else $ORCHARD_SANDBOX, else 'bwrap'. Unknown names raise ValueError."""
    name = isolation or os.environ.get("ORCHARD_SANDBOX") or "bwrap"
    if name not in ISOLATIONS:
        raise ValueError(f"sandbox isolation must be one of {', '.join(ISOLATIONS)}, got {name!r}")
    return name


class Sandbox:
    """Runs programs under `limits` with the given isolation; at most `workers` at once (see the module docstring).
    Construction checks that the isolation is available (bwrap: found and able to run a probe) and raises
    SandboxUnavailable otherwise; isolation='rlimits_only' logs a warning instead."""

    def __init__(self, limits: Limits = Limits(), isolation: str | None = None, workers: int | None = None,
                 python: str | None = None):
        self.limits = limits
        self.isolation = resolve_isolation(isolation)
        self.workers = int(workers or os.cpu_count() or 1)
        if self.workers < 1:
            raise ValueError(f"sandbox workers must be >= 1, got {workers}")
        self.python = os.path.realpath(python or getattr(sys, "_base_executable", None) or sys.executable)
        self._gate = threading.BoundedSemaphore(self.workers)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        if self.isolation == "bwrap":
            self.bwrap = shutil.which("bwrap") or ""
            if not self.bwrap:
                raise SandboxUnavailable(f"the code sandbox needs bubblewrap (`bwrap`), which is not on PATH; "
                                         f"{INSTALL_HINT}")
            self._mounts = _bwrap_mounts(self.python)
            self._probe()
        else:
            self.bwrap = ""
            log.warning("code sandbox: isolation='rlimits_only' was chosen: untrusted code runs WITHOUT namespace "
                        "isolation: as your user, able to read and write your files and to use the network (only its "
                        "environment is cleared); just CPU, memory, file-size, output and wall-clock limits apply%s",
                        ", and not the process limit (you are root)" if os.geteuid() == 0 else "")

    # --- public ---------------------------------------------------------------------------------------------
    def run(self, program: str, stdin: str = "", limits: Limits | None = None) -> ExecResult:
        """Execute `program` (Python source) with `stdin` as its standard input; blocks while `workers` others run."""
        lim = limits or self.limits
        with self._gate:
            slot = _acquire_slot()
            try:
                if self.isolation == "bwrap":
                    return self._run_bwrap(program, stdin, lim, slot)
                return self._run_rlimits(program, stdin, lim)
            finally:
                _release_slot(slot)

    def map(self, programs: list[str], stdins: list[str] | None = None,
            limits: Limits | None = None) -> list[ExecResult]:
        """`run` over many programs, `workers` at a time, results in order."""
        stdins = stdins if stdins is not None else [""] * len(programs)
        if len(stdins) != len(programs):
            raise ValueError(f"{len(stdins)} stdins for {len(programs)} programs")
        if not programs:
            return []
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        return list(self._pool.map(lambda ps: self.run(ps[0], ps[1], limits), zip(programs, stdins)))

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    # --- bwrap ----------------------------------------------------------------------------------------------
    def _probe(self) -> None:
        """Run `print(1)` once so a bwrap that cannot create namespaces fails here, clearly, not mid-training."""
        try:
            r = self.run("print(1)", limits=Limits())
        except SandboxError as e:
            raise SandboxUnavailable(f"bwrap ({self.bwrap}) is installed but cannot run the sandbox here: {e}; "
                                     f"{INSTALL_HINT}") from None
        if not (r.ok and r.stdout.strip() == "1"):
            raise SandboxUnavailable(f"bwrap ({self.bwrap}) probe failed: {r.status.value}, {r.detail}; stderr: "
                                     f"{r.stderr[-500:]!r}")

    def _run_bwrap(self, program: str, stdin: str, lim: Limits, slot: int) -> ExecResult:
        root = os.geteuid() == 0
        prog_fd, stdin_fd = _memfd("program", program), _memfd("stdin", stdin)
        status_r, status_w = os.pipe()
        cmd = [self.bwrap, "--die-with-parent", "--new-session", "--clearenv", "--json-status-fd", str(status_w)]
        # As root: no user namespace (bwrap would map the sandbox to uid 0 outside, exempt from RLIMIT_NPROC); the
        # launcher drops to the slot's own uid with CAP_SETUID/SETGID, the only capabilities kept, then has none.
        cmd += (["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                 "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
                if root else ["--unshare-all", "--unshare-user", "--disable-userns"])
        cmd += self._mounts + ["--proc", "/proc", "--dev", "/dev"]
        cmd += ["--size", str(lim.file_mb << 20), "--perms", "1777", "--tmpfs", "/tmp",
                "--perms", "0755", "--dir", "/sandbox", "--perms", "0400", "--ro-bind-data", str(prog_fd),
                "/sandbox/program.py", "--remount-ro", "/", "--chdir", "/tmp",
                "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
                "--", self.python, "-I", "-S", "-B", "-c", _LAUNCHER, "/sandbox/program.py", _limits_arg(lim),
                str(_slot_uid(slot) if root else -1)]
        try:  # _execute closes status_w once bwrap has it, so that reading status_r ends when bwrap exits
            result, status = _execute(cmd, stdin_fd, lim, pass_fds=(prog_fd, status_w), env={"PATH": "/usr/bin:/bin"},
                                      close_after_start=(status_w,), status_fd=status_r)
        finally:
            for fd in (prog_fd, stdin_fd, status_r):
                os.close(fd)
        if '"child-pid"' not in status and result.status is not Status.TIMEOUT:
            raise SandboxError(f"bwrap did not start the program (exit {result.exit_code}): {result.stderr[-500:]}")
        return result

    # --- rlimits only ---------------------------------------------------------------------------------------
    def _run_rlimits(self, program: str, stdin: str, lim: Limits) -> ExecResult:
        stdin_fd = _memfd("stdin", stdin)
        with tempfile.TemporaryDirectory(prefix="orchard-sandbox-") as tmp:
            path = Path(tmp) / "program.py"
            path.write_text(program)
            cmd = [self.python, "-I", "-S", "-B", "-c", _LAUNCHER, str(path), _limits_arg(lim), "-1"]
            try:
                result, _ = _execute(cmd, stdin_fd, lim, pass_fds=(), env={"HOME": tmp, "LANG": "C.UTF-8"}, cwd=tmp)
            finally:
                os.close(stdin_fd)
        return result


def _limits_arg(lim: Limits) -> str:
    """The launcher's second argument: cpu seconds, address-space bytes, processes, file bytes, open files."""
    return f"{int(lim.cpu_s)},{lim.memory_mb << 20},{lim.processes},{lim.file_mb << 20},{lim.open_files}"


def _memfd(name: str, text: str) -> int:
    """An in-memory file holding `text`, positioned at its start (used as stdin and as bwrap's program data)."""
    fd = os.memfd_create(f"orchard-{name}", 0)  # no MFD_CLOEXEC: passed to the child explicitly
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, False)
    return fd


def _bwrap_mounts(python: str) -> list[str]:
    """Read-only binds of what the interpreter needs, and nothing that holds the job's data."""
    args: list[str] = []
    for top in ("/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--perms", "0755", "--dir", "/usr"]  # bwrap makes missing parents 0700, unreadable after the uid drop
    for d in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32"):
        if os.path.isdir(d) and not os.path.islink(d):
            args += ["--ro-bind", d, d]
    args += ["--perms", "0755", "--dir", "/etc"]
    for f in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d"):
        if os.path.exists(f):
            args += ["--ro-bind", f, f]
    prefix = os.path.realpath(sys.base_prefix)
    binds = [python] if python.startswith("/usr/") else []
    if not prefix.startswith("/usr/lib") and prefix != "/usr":
        binds.append(prefix)
    protected = [os.path.realpath(p) for p in (os.getcwd(), os.path.expanduser("~"), str(Path(__file__).parents[1]))]
    for src in binds:
        for p in protected:
            if p == src or p.startswith(src.rstrip("/") + "/"):
                raise SandboxUnavailable(f"the Python installation to expose read-only ({src}) contains {p} (the "
                                         f"working directory, home or repository), which the sandbox must hide; "
                                         f"use an interpreter installed elsewhere (Sandbox(python=...))")
        made = set()
        for parent in reversed(Path(src).parents):  # bwrap would create missing parents 0700: make them 0755
            if str(parent) != "/" and not str(parent).startswith("/usr") and str(parent) not in made:
                args += ["--perms", "0755", "--dir", str(parent)]
                made.add(str(parent))
        args += ["--ro-bind", src, src]
    return args


def _execute(cmd: list[str], stdin_fd: int, lim: Limits, pass_fds: tuple, env: dict, cwd: str | None = None,
             close_after_start: tuple = (), status_fd: int = -1) -> tuple[ExecResult, str]:
    """Start `cmd` in its own process group, collect stdout/stderr up to the output cap until it exits or the wall
    limit passes; kill on either limit. `status_fd`: bwrap's --json-status-fd, read alongside; once it names the
    sandbox's init process (`child-pid`), a kill goes to that process: the kernel then kills everything in its pid
    namespace, and the init exits (so bwrap does, so we return) only once all of them are gone. Returns (result, bwrap
    status text)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, stdin=stdin_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=pass_fds, env=env, cwd=cwd, start_new_session=True)
    except OSError as e:
        raise SandboxError(f"could not start {cmd[0]}: {e}") from e
    finally:
        for fd in close_after_start:
            os.close(fd)
    out, err, status = bytearray(), bytearray(), bytearray()
    killed_for = ""
    deadline = t0 + lim.wall_s
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    if status_fd >= 0:
        sel.register(status_fd, selectors.EVENT_READ, status)
    try:
        while any(k.data is not status for k in sel.get_map().values()):
            left = deadline - time.perf_counter()
            if left <= 0:
                killed_for = "wall limit"
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
            if len(out) + len(err) > lim.output_bytes:
                killed_for = "output limit"
                break
        if killed_for:
            _kill(proc, status)
        try:
            rc = proc.wait(timeout=max(0.05, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:  # output closed (e.g. the program closed fd 1 and 2) but still running
            killed_for = "wall limit"
            _kill(proc, status)
            rc = proc.wait()
        if status_fd >= 0:
            while chunk := os.read(status_fd, 65536):  # bwrap has exited: its write end is closed
                status.extend(chunk)
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    wall = time.perf_counter() - t0
    keep = lim.output_bytes
    stdout, stderr = out[:keep].decode(errors="replace"), err[:max(0, keep - len(out))].decode(errors="replace")
    return (_classify(rc, killed_for, stdout, stderr, wall, lim, bwrapped=status_fd >= 0),
            status.decode(errors="replace"))


def _kill(proc: subprocess.Popen, status: bytearray) -> None:
    """SIGKILL the sandbox's init (its pid namespace dies with it) if bwrap has named it, else the process group."""
    m = re.search(rb'"child-pid": *(\d+)', bytes(status))
    try:
        if m:
            os.kill(int(m.group(1)), signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _classify(rc: int, killed_for: str, stdout: str, stderr: str, wall: float, lim: Limits,
              bwrapped: bool) -> ExecResult:
    def res(status: Status, detail: str, code: int | None = None) -> ExecResult:
        return ExecResult(status, code, stdout, stderr, wall, detail)

    if killed_for == "wall limit":
        return res(Status.TIMEOUT, f"wall limit {lim.wall_s:g} s")
    if killed_for == "output limit":
        return res(Status.KILLED, f"output limit {lim.output_bytes} bytes")
    # bwrap reports a child killed by signal N as exit code 128 + N; a bare process as returncode -N.
    sig = -rc if rc < 0 else (rc - 128 if bwrapped and 128 < rc < 128 + 65 else 0)
    if sig:
        name = signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"
        if sig == signal.SIGXCPU:
            return res(Status.TIMEOUT, f"cpu limit {lim.cpu_s} s")
        if sig == signal.SIGXFSZ:
            return res(Status.KILLED, f"file size limit {lim.file_mb} MiB")
        if sig == signal.SIGKILL:
            return res(Status.KILLED, f"SIGKILL (cpu hard limit or out of memory)")
        return res(Status.CRASHED, f"signal {name}")
    if rc == 0:
        return res(Status.OK, "exit 0", 0)
    last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
    if last.startswith("MemoryError"):
        return res(Status.KILLED, f"memory limit {lim.memory_mb} MiB (MemoryError)", rc)
    return res(Status.ERROR, f"exit {rc}" + (f": {last[:200]}" if last else ""), rc)


_SHARED: dict[tuple, Sandbox] = {}
_SHARED_LOCK = threading.Lock()


def shared_sandbox(isolation: str | None = None, workers: int | None = None) -> Sandbox:
    """One Sandbox per (isolation, workers) per process, built (and probed) on first use: rewards share it so the
    pool bounds all their executions together."""
    key = (resolve_isolation(isolation), int(workers or os.cpu_count() or 1))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Sandbox(isolation=key[0], workers=key[1])
        return _SHARED[key]


def with_limits(base: Limits, **overrides) -> Limits:
    """`base` with the given fields replaced (None values ignored)."""
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
