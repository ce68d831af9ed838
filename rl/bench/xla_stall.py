"""How often does an XLA:CPU training call of IPPO / MAPPO hang? N fresh processes per configuration.

    python -m rl.bench.xla_stall --algo ippo,mappo --runs 20 --timeout 90 [--env-var K=V ...] [--cpus 0]
        [--python /tmp/jax09/bin/python] [--label NAME] [--out bench_results/xla_stall] [--stacks 1]

Each run is a fresh child process (`--child`) that builds the jitted calls exactly as an `rl bench marl` pair /
an `rl train` MARL job does (trainers/marl/job.py: `jit(init_seeds)`, `jit(vmap(evaluate))`, one
`jit(vmap(segment))` of `--segment-updates` PPO updates lowered and compiled for the vmapped `RunnerState`), with
rl bench marl's defaults (mpe_simple_spread, 8 seeds vmapped, 16 envs per seed, 128 steps per rollout, 10 updates
per segment), and calls the segment `--segments` times. The parent watches the child's CPU time: a child whose
CPU time advances by less than `--min-cpu` seconds in `--stall-s` seconds (an idle deadlock), or that runs past
`--timeout` seconds, is a hang. For the first `--stacks` hangs of an invocation, `py-spy dump --native` (and gdb's
`thread apply all bt`) of the hung child are saved next to the report before it is killed.

The deadlock of issue 14 (rl/_xla.py) shows fastest with `--seeds 2 --segments 1 --init vmap` on jaxlib 0.10.2
(`rl bench marl --seeds 2`; it hangs in the init, before the first segment). Not a test (hang rates and speeds are measurements, not pass/fail): each invocation writes `<label>.json` and
rewrites `xla_stall.md`, the table of every configuration measured so far in `--out` (hangs / N per algo,
env-steps/s of the healthy runs' training segments, and where the hangs happened).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


# --- child: one process, the jitted calls of one MARL job --------------------------------------------------------
def child(a: argparse.Namespace) -> None:
    def mark(phase: str, **kw) -> None:
        print(json.dumps({"phase": phase, "t": time.time(), **kw}), flush=True)

    mark("start")
    import jax
    import numpy as np

    from trainers.marl.common import make_trainer, seed_keys, split_seed_key
    from trainers.marl.config import IPPOConfig, MAPPOConfig

    cls = {"ippo": IPPOConfig, "mappo": MAPPOConfig}[a.algo]
    # what rl.bench.marl passes to `rl train` for a pair (its defaults), minus run-dir/logging options
    cfg = cls(env={"name": a.env, "num_envs": a.num_envs}, num_steps=a.num_steps, total_timesteps=400_000,
              num_seeds=a.seeds, segment_updates=a.segment_updates, log={"progress": False, "tensorboard": False})
    trainer = make_trainer(cfg)
    keys = seed_keys(cfg.seed, cfg.num_seeds)
    k_init, k_eval = jax.vmap(split_seed_key)(keys)
    evaluate = jax.jit(jax.vmap(trainer.evaluate))
    if a.init == "map":  # as trainers/marl/job.py: one seed at a time (lax.map), no batched LAPACK call
        runner = jax.jit(trainer.init_seeds)(k_init)
    else:  # what job.py did before: batched QRs in the orthogonal init
        runner = jax.jit(jax.vmap(trainer.init))(k_init)
    mark("init", jax=jax.__version__, devices=len(jax.devices()))
    ret0 = np.asarray(evaluate(runner.params, k_eval))
    mark("eval", ret=float(ret0.mean()))
    n = cfg.segment_updates
    jit_kw = {"donate_argnums": 0} if a.donate else {}
    fn = jax.jit(jax.vmap(lambda r: trainer.segment(r, n)), **jit_kw).lower(runner).compile()
    mark("compile")
    steps = cfg.num_seeds * n * trainer.env_steps_per_update
    for i in range(a.segments):
        t0, c0 = time.perf_counter(), time.process_time()
        runner, metrics = fn(runner)
        metrics = jax.tree.map(np.asarray, metrics)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        mark(f"segment {i + 1}", dt=dt, sps=steps / dt, steps_per_cpu_s=steps / cpu,
             ret=float(np.nanmean(metrics["return"])))
    mark("done")


# --- parent -------------------------------------------------------------------------------------------------------
def _cpu_s(proc) -> float:
    import psutil

    try:
        p = psutil.Process(proc.pid)
        return sum(sum(c.cpu_times()[:2]) for c in [p, *p.children(recursive=True)])
    except psutil.Error:
        return 0.0


def _dump_stacks(pid: int, out: Path, python: str) -> str:
    """Native stacks of a hung process (py-spy, then gdb); returns the file written."""
    texts = []
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    for name, cmd in [("py-spy dump --native", [py_spy, "dump", "--native", "--pid", str(pid)]),
                      ("gdb thread apply all bt", ["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"])]:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            texts.append(f"===== {name} (rc {p.returncode}) =====\n{p.stdout}\n{p.stderr[-3000:]}")
        except (OSError, subprocess.TimeoutExpired) as e:
            texts.append(f"===== {name}: {e!r} =====")
    out.write_text("\n".join(texts))
    return str(out)


def run_one(a: argparse.Namespace, algo: str, env: dict, stack_path: Path | None) -> dict:
    cmd = [a.python, "-m", "rl.bench.xla_stall", "--child", "--algo", algo, "--env", a.env, "--seeds", str(a.seeds),
           "--num-envs", str(a.num_envs), "--num-steps", str(a.num_steps), "--segment-updates", str(a.segment_updates),
           "--segments", str(a.segments), "--init", a.init, *(["--donate"] if a.donate else [])]
    cpus = [int(c) for c in a.cpus.split(",")] if a.cpus else None
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
                                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        last_cpu, last_change, verdict, stack = 0.0, time.monotonic(), None, None
        while proc.poll() is None:
            time.sleep(0.5)
            cpu, now = _cpu_s(proc), time.monotonic()
            if cpu > last_cpu + a.min_cpu:
                last_cpu, last_change = cpu, now
            elif now - last_change > a.stall_s:
                verdict = "stall"
            if now - t0 > a.timeout:
                verdict = verdict or "timeout"
            if verdict:
                if stack_path is not None:
                    stack = _dump_stacks(proc.pid, stack_path, a.python)
                proc.kill()
                proc.wait()
                break
        wall = time.monotonic() - t0
        log.seek(0)
        out = log.read()
    marks = []
    for line in out.splitlines():
        if line.startswith('{"phase"'):
            try:
                marks.append(json.loads(line))
            except ValueError:
                pass
    phases = [m["phase"] for m in marks]
    sps = [m["sps"] for m in marks if "sps" in m][1:]  # the first segment call can include one-time work
    per_cpu = [m["steps_per_cpu_s"] for m in marks if "steps_per_cpu_s" in m][1:]
    r = {"algo": algo, "hang": verdict is not None, "verdict": verdict or ("ok" if "done" in phases else "error"),
         "returncode": proc.returncode, "wall_s": round(wall, 1), "cpu_s": round(last_cpu, 1),
         "last_phase": phases[-1] if phases else None, "sps": sum(sps) / len(sps) if sps else None,
         "steps_per_cpu_s": sum(per_cpu) / len(per_cpu) if per_cpu else None,
         "jax": next((m["jax"] for m in marks if "jax" in m), None), "stack": stack}
    if r["verdict"] == "error":
        r["tail"] = out[-3000:]
    return r


def summarize(results: list[dict], algo: str) -> dict:
    rs = [r for r in results if r["algo"] == algo]
    ok = [r["sps"] for r in rs if r["verdict"] == "ok" and r["sps"]]
    return {"runs": len(rs), "hangs": sum(r["hang"] for r in rs), "errors": sum(r["verdict"] == "error" for r in rs),
            "sps": sum(ok) / len(ok) if ok else None,
            "hung_in": sorted({r["last_phase"] for r in rs if r["hang"]})}


def write_table(out: Path) -> str:
    lines = ["| configuration | jax | IPPO hangs / N | MAPPO hangs / N | IPPO env-steps/s | MAPPO env-steps/s | "
             "hung after phase |", "|---|---|---|---|---|---|---|"]
    for f in sorted(out.glob("*.json"), key=lambda p: p.stat().st_mtime):
        d = json.loads(f.read_text())
        s = d["summary"]
        cell = lambda algo, k: (f"{s[algo]['hangs']} / {s[algo]['runs']}" + (f" ({s[algo]['errors']} errors)" if
                                s[algo]["errors"] else "")) if k == "h" else (f"{s[algo]['sps']:,.0f}" if s[algo]["sps"]
                                                                              else "-")
        get = lambda algo, k: cell(algo, k) if algo in s else "-"
        hung = sorted({p for v in s.values() for p in v["hung_in"]})
        lines.append(f"| {d['label']} | {d['jax']} | {get('ippo', 'h')} | {get('mappo', 'h')} | {get('ippo', 's')} | "
                     f"{get('mappo', 's')} | {', '.join(hung) or '-'} |")
    text = ("# XLA:CPU hang rate of the MARL training calls (`python -m rl.bench.xla_stall`)\n\n"
            "Each run: a fresh process, mpe_simple_spread, the calls of an `rl bench marl` pair (init, evaluate, a "
            "compiled 10-update segment called several times). A hang: CPU time stopped advancing, or the run passed "
            "its timeout. env-steps/s: mean over the healthy runs' segment calls (first call excluded).\n\n"
            + "\n".join(lines) + "\n")
    (out / "xla_stall.md").write_text(text)
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m rl.bench.xla_stall", description=__doc__.strip().splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--algo", default="ippo,mappo", help="comma-separated: ippo, mappo (runs alternate between them)")
    p.add_argument("--runs", type=int, default=20, help="fresh processes per algo")
    p.add_argument("--timeout", type=float, default=90.0, help="wall seconds after which a run counts as hung")
    p.add_argument("--stall-s", type=float, default=15.0, help="seconds without CPU progress that make a hang")
    p.add_argument("--min-cpu", type=float, default=0.25, help="CPU seconds that count as progress")
    p.add_argument("--env-var", action="append", default=[], metavar="K=V",
                   help="environment of the children (XLA_FLAGS=... is appended to what rl/_xla.py sets)")
    p.add_argument("--cpus", default="", help="CPU affinity of the children, e.g. 0 (XLA sizes its pools by it)")
    p.add_argument("--python", default=sys.executable, help="interpreter of the children (another jax release)")
    p.add_argument("--label", default="", help="name of the configuration in the table")
    p.add_argument("--out", default="bench_results/xla_stall", help="directory of the JSON and markdown reports")
    p.add_argument("--stacks", type=int, default=1, help="hangs of which to save native stacks")
    p.add_argument("--env", default="mpe_simple_spread")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--num-steps", type=int, default=128)
    p.add_argument("--segment-updates", type=int, default=10)
    p.add_argument("--segments", type=int, default=4, help="segment calls per run")
    p.add_argument("--donate", action="store_true", help="donate the RunnerState to the segment call")
    p.add_argument("--init", choices=["vmap", "map"], default="map",
                   help="how the seeds' init is batched: jax.lax.map (MarlTrainer.init_seeds, as trainers/marl/job.py) "
                        "or jax.vmap (before; deadlocks with jaxlib 0.10.x)")
    a = p.parse_args(argv)
    if a.child:
        a.algo = a.algo.strip()
        return child(a)

    algos = [x.strip() for x in a.algo.split(",") if x.strip()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    extra = dict(kv.split("=", 1) for kv in a.env_var)
    for k, v in extra.items():
        env[k] = v  # rl/_xla.py appends its YNN flag to a given XLA_FLAGS
    label = a.label or " ".join([*a.env_var, *([f"cpus={a.cpus}"] if a.cpus else []), *(["donate"] if a.donate else []), f"init={a.init}",
                                 *([f"python={a.python}"] if a.python != sys.executable else [])]) or "current settings"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "_" for c in label)[:80]
    results, stacks_left = [], a.stacks
    print(f"{label}: {a.runs} runs x {algos}, timeout {a.timeout:g} s, stall {a.stall_s:g} s", flush=True)
    for i in range(a.runs):
        for algo in algos:
            stack_path = out / f"{slug}.{algo}.{i}.stack.txt" if stacks_left > 0 else None
            r = run_one(a, algo, env, stack_path)
            if r["stack"]:
                stacks_left -= 1
            results.append(r)
            print(f"  {i + 1:2d} {algo}: {r['verdict']:7s} {r['wall_s']:5.1f} s  cpu {r['cpu_s']:5.1f} s  "
                  f"last {r['last_phase']}  " + (f"{r['sps']:,.0f} env-steps/s, {r['steps_per_cpu_s']:,.0f} per CPU-s"
                                                 if r["sps"] else "")
                  + (f"\n{r['tail']}" if r.get("tail") else ""), flush=True)
    summary = {algo: summarize(results, algo) for algo in algos}
    jax_v = next((r["jax"] for r in results if r["jax"]), "?")
    (out / f"{slug}.json").write_text(json.dumps({"label": label, "jax": jax_v, "args": vars(a), "summary": summary,
                                                  "results": results}, indent=1))
    for algo, s in summary.items():
        print(f"{label} {algo}: {s['hangs']} / {s['runs']} hung" + (f", {s['sps']:,.0f} env-steps/s" if s["sps"] else ""))
    print(write_table(out))


if __name__ == "__main__":
    main()
