"""`rl bench btm`: branch-train-merge, (1) the evaluation table over seeds, (2) parallel efficiency of the experts,
(3) merge time and memory per method.

1. Table: `rl train <--config> seed=S` for each of `--seeds` (a child process each); per model (seed, experts, merges,
   ensemble, dense) the held-out accuracy per domain and on average, mean (min, max) over seeds. The goal checked:
   the best merge or the ensemble >= the dense baseline's average, and >= 3 points above it; reported met or missed.
2. Parallel efficiency at K=2: the first two domains' experts of `--config` (`--efficiency-steps` GRPO steps each),
   once one at a time and once two at a time, as Ray tasks of `parallel.cpus_per_expert` CPUs through the same code
   (`parallel.experts_in_parallel` 1, then 2; every run in a fresh worker process); efficiency =
   T_one_at_a_time / (2 x T_concurrent) (1.0: perfect). The projection for K = 8 / 64 with a slot per expert is a
   small model, not a measurement: the experts share nothing, so T_K = T_ray + t_run and the one-at-a-time time is
   T_ray + K t_run, efficiency (T_ray + K t_run) / (K (T_ray + t_run)), with T_ray the measured Ray start and
   t_run = (T_one_at_a_time - T_ray) / 2 one run's measured time (task start, imports, training, evaluation); it
   ignores stragglers and shared storage.
3. Merges: for each method, a child process merges two perturbed copies of `--merge-model` (base = the model
   itself) with mergekit; wall time and the child's peak RSS.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rl.bench.common import run_child, write_report


def add_arguments(p) -> None:
    p.add_argument("--config", default="configs/btm_tiny.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--skip-table", action="store_true", help="only the efficiency and merge parts")
    p.add_argument("--efficiency-steps", type=int, default=20)
    p.add_argument("--merge-model", default="random-30m", help="zoo name or HF directory merged in part 3")
    p.add_argument("--methods", nargs="+", default=["linear", "weighted", "task_arithmetic", "ties", "dare",
                                                    "dare_ties"])
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of --config for every part (repeatable)")


# --- 1. the table ----------------------------------------------------------------------------------------------
def table_over_seeds(args, out: Path) -> tuple[list[dict], dict]:
    per_seed = {}
    for s in args.seeds:
        run_dir = out / f"btm-seed{s}"
        if not (run_dir / "summary.json").is_file():
            cmd = [sys.executable, "-m", "rl.cli", "train", args.config, *args.overrides, f"seed={s}",
                   f"run_dir={run_dir}"]
            if (run_dir / "checkpoints").is_dir():
                cmd = [sys.executable, "-m", "rl.cli", "train", "--resume", str(run_dir)]
            run_child(cmd, label=f"btm seed {s}", timeout=args.timeout, capture=False)
        per_seed[s] = json.loads((run_dir / "summary.json").read_text())
    first = per_seed[args.seeds[0]]
    names = first["domains"]
    rows = []
    for i, r0 in enumerate(first["table"]):
        vals = [per_seed[s]["table"][i] for s in args.seeds]
        row = {"model": r0["model"]}
        for k in (*names, "avg", "ood"):
            if k in r0:
                xs = [v[k] for v in vals]
                row[k] = sum(xs) / len(xs)
                if len(xs) > 1:
                    row[f"{k}_min"], row[f"{k}_max"] = min(xs), max(xs)
        rows.append(row)
    dense = next(r for r in rows if r["model"] == "dense")
    best = max((r for r in rows if r["model"].startswith("merge:") or r["model"] == "ensemble"), key=lambda r: r["avg"])
    goal = {"best_combined": best["model"], "best_combined_avg": best["avg"], "dense_avg": dense["avg"],
            "best_minus_dense_points": 100 * (best["avg"] - dense["avg"]),
            "goal_matches_dense": best["avg"] >= dense["avg"],
            "goal_beats_dense_by_3_points": best["avg"] - dense["avg"] >= 0.03,
            "seeds": args.seeds, "wall_time_s": {s: per_seed[s]["wall_time_s"] for s in args.seeds}}
    return rows, goal


# --- 2. parallel efficiency ------------------------------------------------------------------------------------
def efficiency(args, out: Path) -> dict:
    from rl.config import load_config
    from rl.rundir import RunDir
    from trainers.btm.experts import train_all
    from trainers.btm.job import plan

    import ray

    from rl.cluster import ClusterConfig, init_ray

    t0 = time.time()
    init_ray(ClusterConfig(backend="ray"))
    ray.shutdown()
    t_ray = time.time() - t0
    timings = {}
    for label, slots in (("one_at_a_time", 1), ("concurrent", 2)):
        root = out / f"efficiency-{label}"
        if root.exists():
            import shutil

            shutil.rmtree(root)
        cfg = load_config(args.config, [*args.overrides, "dense=false", f"expert.max_steps={args.efficiency_steps}",
                                        "expert.checkpoint.every=0", f"parallel.experts_in_parallel={slots}"])
        cfg.domains = cfg.domains[:2]
        from rl.zoo import resolve_model_path

        runs = plan(cfg, RunDir(root), resolve_model_path(cfg.seed_model))
        t0 = time.time()
        summaries = train_all(runs, cfg.parallel)
        timings[label] = {"wall_s": time.time() - t0,
                          "run_wall_s": {k: v["wall_time_s"] for k, v in summaries.items()}}
    conc, seq = timings["concurrent"]["wall_s"], timings["one_at_a_time"]["wall_s"]
    t_run = max(0.0, (seq - t_ray) / 2)
    proj = {K: (t_ray + K * t_run) / (K * (t_ray + t_run)) for K in (8, 64)}
    return {"K": 2, "concurrent_s": conc, "one_at_a_time_s": seq, "efficiency": seq / (2 * conc),
            "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "expert_steps": args.efficiency_steps,
            "t_ray_s": t_ray, "t_run_s": t_run, "projected_efficiency": proj, "timings": timings}


# --- 3. merges ---------------------------------------------------------------------------------------------------
def merge_child(a: dict) -> dict:
    """One merge in this (child) process; returns its wall time."""
    from rl.merge import MergeSpec, merge

    t0 = time.time()
    merge(MergeSpec(method=a["method"], experts=tuple(a["experts"]), base=a["base"], density=0.5), a["out"])
    return {"merge_s": time.time() - t0}


def perturbed_copies(model: str, out: Path, n: int = 2) -> tuple[str, list[str]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl.zoo import resolve_model_path

    base = resolve_model_path(model)
    dirs = []
    for i in range(n):
        d = out / f"expert{i}"
        if not (d / "config.json").is_file():
            m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            g = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(1e-3 * torch.randn(p.shape, generator=g))
            m.save_pretrained(d)
            AutoTokenizer.from_pretrained(base).save_pretrained(d)
        dirs.append(str(d))
    return str(base), dirs


def merges(args, out: Path) -> list[dict]:
    import shutil

    from rl.zoo import describe

    root = out / "merges"
    base, experts = perturbed_copies(args.merge_model, root)
    params = describe(Path(base))["params"]
    rows = []
    for method in args.methods:
        dst = root / f"merged-{method}"
        shutil.rmtree(dst, ignore_errors=True)
        a = {"method": method, "experts": experts, "base": base, "out": str(dst)}
        code = ("import json, sys; from rl.bench.btm import merge_child; "
                "print('RESULT ' + json.dumps(merge_child(json.loads(sys.argv[1]))))")
        t0 = time.time()
        p = subprocess.Popen([sys.executable, "-c", code, json.dumps(a)], stdout=subprocess.PIPE, text=True)
        text = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"merge child ({method}) failed")
        res = json.loads(next(x for x in text.splitlines() if x.startswith("RESULT "))[7:])
        rows.append({"method": method, "params": params, "merge_s": round(res["merge_s"], 2),
                     "process_s": round(time.time() - t0, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024)})
        shutil.rmtree(dst, ignore_errors=True)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run(args) -> dict:
    out = Path(args.out) / "btm"
    out.mkdir(parents=True, exist_ok=True)
    extra: dict = {"config": args.config, "overrides": args.overrides}
    notes = []
    table = []
    if not args.skip_table:
        table, goal = table_over_seeds(args, out)
        extra["goal"] = goal
        notes.append(f"Goal: best merge or ensemble ({goal['best_combined']}, {goal['best_combined_avg']:.3f}) vs "
                     f"dense ({goal['dense_avg']:.3f}): {goal['best_minus_dense_points']:+.1f} points; matches dense: "
                     f"{goal['goal_matches_dense']}, beats it by >= 3 points: {goal['goal_beats_dense_by_3_points']} "
                     f"(seeds {args.seeds}).")
    eff = efficiency(args, out)
    extra["efficiency"] = eff
    notes.append(f"Parallel efficiency at K=2: {eff['efficiency']:.2f} ({eff['one_at_a_time_s']:.0f} s one at a time "
                 f"vs {eff['concurrent_s']:.0f} s concurrently, {eff['cpus']} cores, 1-min load average "
                 f"{eff['load_avg_1m']:.1f} at the end); projected with a slot per expert: "
                 + ", ".join(f"K={k}: {v:.2f}" for k, v in eff["projected_efficiency"].items()) + " (a model).")
    extra["merges"] = merges(args, out)
    from rl.bench.common import markdown_table

    notes.append("\n## Merge time and memory (mergekit, two perturbed copies of " + args.merge_model + ")\n\n"
                 + markdown_table(extra["merges"]))
    write_report("btm", table, args.out, extra=extra, notes="\n".join(notes))
    return extra
