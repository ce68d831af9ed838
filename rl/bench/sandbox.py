"""Code sandbox throughput: executions/s through the bubblewrap sandbox vs a bare subprocess (overhead ratio).

Two snippets: a trivial one (`pass`: the fixed cost of starting an execution) and one that burns 100 ms of CPU
(a typical test run). Each runs `--runs` times with 1 and 2 parallel workers, three ways, interleaved per cell:
- `bare`: `python -I -S -B -c SNIPPET` in a plain subprocess (same interpreter and flags, no isolation, no limits);
- `sandbox`: `rewards.sandbox.Sandbox` with isolation bwrap (namespaces, read-only binds, rlimits, wall/output kill);
- `rlimits_only`: the same without namespaces (the opt-in weaker mode).
`overhead_x` = bare executions/s / sandbox executions/s (1.0 = free). One warm-up execution per setting first.
"""
from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from rl.bench.common import write_report

SNIPPETS = {
    "trivial": "pass",
    "cpu_100ms": "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.1:\n    pass",
}


def add_arguments(p) -> None:
    p.add_argument("--runs", type=int, default=40, help="executions per (snippet, workers, runner) cell")
    p.add_argument("--workers", default="1,2", help="comma list of parallel worker counts")
    p.add_argument("--snippets", default=",".join(SNIPPETS), help=f"comma list of: {', '.join(SNIPPETS)}")


def _bare(python: str, snippet: str, runs: int, workers: int) -> float:
    def one(_):
        p = subprocess.run([python, "-I", "-S", "-B", "-c", snippet], capture_output=True, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"bare subprocess failed: {p.stderr[-500:]!r}")

    one(0)
    with ThreadPoolExecutor(workers) as pool:
        t0 = time.perf_counter()
        list(pool.map(one, range(runs)))
        return runs / (time.perf_counter() - t0)


def _sandboxed(isolation: str, snippet: str, runs: int, workers: int) -> float:
    from rewards.sandbox import Sandbox

    sb = Sandbox(isolation=isolation, workers=workers)
    try:
        sb.run(snippet)
        t0 = time.perf_counter()
        results = sb.map([snippet] * runs)
        rate = runs / (time.perf_counter() - t0)
    finally:
        sb.close()
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"{isolation}: {len(bad)} of {runs} executions failed, e.g. {bad[0].detail}: "
                           f"{bad[0].stderr[-300:]!r}")
    return rate


def run(a) -> dict:
    import logging
    import sys

    logging.getLogger("rewards.sandbox").setLevel(logging.ERROR)  # the rlimits_only warning, once per Sandbox
    python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    rows = []
    for name in [s for s in a.snippets.split(",") if s]:
        if name not in SNIPPETS:
            raise SystemExit(f"unknown snippet '{name}'; known: {', '.join(SNIPPETS)}")
        for workers in [int(w) for w in a.workers.split(",") if w]:
            bare = _bare(python, SNIPPETS[name], a.runs, workers)
            sandbox = _sandboxed("bwrap", SNIPPETS[name], a.runs, workers)
            weak = _sandboxed("rlimits_only", SNIPPETS[name], a.runs, workers)
            rows.append({"snippet": name, "workers": workers, "runs": a.runs, "bare_exec_per_s": bare,
                         "sandbox_exec_per_s": sandbox, "rlimits_only_exec_per_s": weak,
                         "sandbox_ms": 1000 * workers / sandbox, "bare_ms": 1000 * workers / bare,
                         "overhead_x": bare / sandbox})
            print(rows[-1], flush=True)
    notes = ("`overhead_x` = bare subprocess executions/s / sandbox executions/s. `*_ms`: wall time per execution "
             "(workers / rate). Goal: under 2x for the 100 ms snippet.")
    write_report("sandbox", rows, a.out, notes=notes)
    return {"rows": rows}
