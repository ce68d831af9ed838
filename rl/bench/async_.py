"""Asynchronous rollout vs the synchronous loop: the default recipe at max_staleness 0, 1, 2, 4, plus a calibrated simulator.

Each setting trains the default recipe (`configs/grpo_tiny.yaml`) for the same number of steps (so the same
number of samples) in a fresh `rl train` process on Ray, with one rollout worker and the trainer each pinned to
its own core (`cluster.pin_cpus=true`: trainer on core 0, worker on core 1, one torch thread each), and reports
samples/s, trainer idle fraction (waiting for groups), worker idle fraction (not generating), staleness and the
held-out accuracy at the end (greedy, 300 problems). `max_staleness 0` is the synchronous loop through the same
code. Rates are over steps 2..N (the first step includes warm-up).

`--trainer-ranks 2` also runs the synchronous loop and `--project-staleness` with 2 data-parallel trainer ranks
(Ray actors, DDP over gloo, each pinned to its own core, the worker sharing a core with one of them when the
machine has fewer cores than processes). Their synchronous training step time against one rank's gives the
measured data-parallel efficiency train_s(1) / (N x train_s(N)), which then replaces the assumed one in the
projection.

The simulator (`rollout/simulator.py`, the controller's own scheduler) is calibrated from the synchronous run's
measured generation time per task, training time per step and publish time, then (1) replays the 1-worker
settings for comparison with what was measured and (2) projects throughput for M rollout workers x N trainer
ranks, which one machine cannot measure.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rl.bench.common import markdown_table, run_child, write_report


def add_arguments(p) -> None:
    p.add_argument("--staleness", default="0,1,2,4", help="max_staleness values to run (0 = synchronous)")
    p.add_argument("--steps", type=int, default=40, help="training steps per setting (same samples for each)")
    p.add_argument("--config", default="configs/grpo_tiny.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pin", action="store_true", help="do not pin the trainer and the worker to their own cores")
    p.add_argument("--project-staleness", type=int, default=2, help="max_staleness of the M x N projection")
    p.add_argument("--workers", default="1,2,4,8,16", help="rollout workers M of the projection")
    p.add_argument("--ranks", default="1,2,4,8", help="trainer ranks N of the projection")
    p.add_argument("--trainer-ranks", default="2",
                   help="data-parallel trainer ranks to measure besides 1 (comma list; '' for none): each runs the "
                        "synchronous loop and --project-staleness")
    p.add_argument("--dp-efficiency", type=float, default=0.9,
                   help="data-parallel scaling efficiency of the trainer for N > 1 in the projection, unless "
                        "--trainer-ranks measured one")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds one training run may take before the bench stops it and fails (default 3600)")
    p.add_argument("--overrides", nargs="*", default=[], help="extra config overrides for every setting")
    p.add_argument("--replay", metavar="ASYNC_JSON",
                   help="no training: redo the simulator tables from a previous report's measurements")


def _train(a, ms: int, run_dir: Path, ranks: int = 1) -> dict:
    args = [a.config, f"seed={a.seed}", f"max_steps={a.steps}", f"max_staleness={ms}", "eval.every=0",
            f"cluster.trainer_ranks={ranks}",
            "checkpoint.every=0", "log.progress=false", "log.tensorboard=false", "cluster.backend=ray",
            "cluster.rollout_workers=1", f"cluster.pin_cpus={'false' if a.no_pin else 'true'}",
            f"run_dir={run_dir}", *a.overrides]
    t0 = time.time()
    run_child([sys.executable, "-m", "rl.cli", "train", *args], label=f"rl train {' '.join(args)}",
              timeout=a.timeout, env={**os.environ, "TQDM_DISABLE": "1"})
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"summary": summary, "steps": [r for r in rows if r["step"] >= 1], "process_wall_s": time.time() - t0}


def _measure(res: dict, ms: int, G: int, ranks: int = 1) -> dict:
    steps = res["steps"][1:]  # steady state: skip step 1
    loop_s = sum(r["perf/step_s"] for r in steps)
    samples = sum(r["dynamic_sampling/groups"] for r in steps) * G
    s = res["summary"]
    return {"trainer_ranks": ranks, "max_staleness": ms, "steps": len(res["steps"]), "samples_per_s": samples / loop_s,
            "train_s": statistics.median(r["perf/train_s"] for r in steps),
            "trainer_idle_frac": sum(r["perf/trainer_wait_s"] for r in steps) / loop_s,
            "worker_idle_frac": max(0.0, 1 - sum(r["perf/worker_gen_s"] for r in steps) / loop_s),
            "staleness_mean": statistics.fmean(r["offpolicy/staleness_mean"] for r in steps),
            "staleness_max": max(r["offpolicy/staleness_max"] for r in steps),
            "acc_before": s["eval/accuracy_before"], "acc_after": s["eval/accuracy_after"],
            "reward_last5": statistics.fmean(r["reward/mean"] for r in res["steps"][-5:]),
            "train_loop_s": sum(r["perf/step_s"] for r in res["steps"]), "process_wall_s": res["process_wall_s"]}


def _calibrate(res: dict, groups_per_step: int, prompts_per_task: int) -> dict:
    """Per-task generation, per-step training and per-publish seconds of the synchronous run (medians)."""
    steps = res["steps"][1:]
    tasks_per_step = -(-groups_per_step // prompts_per_task)
    return {"gen_s": statistics.median(r["perf/worker_gen_s"] for r in steps) / tasks_per_step,
            "train_s": statistics.median(r["perf/train_s"] for r in steps),
            "sync_s": statistics.median(r["perf/sync_s"] for r in steps) + statistics.median(
                r["sync/worker_load_s"] for r in steps)}


def _simulate(a, cal: dict, rows: list[dict], P: int, G: int, k1: int) -> tuple[list[dict], list[dict]]:
    """(1) the measured 1-worker settings replayed in the simulator; (2) the M workers x N ranks projection, where
    a worker's task shrinks to ceil(P / M) prompts and its generation time scales with the prompts in it (linear
    in batch size: optimistic for small batches on a GPU, about right on a CPU)."""
    from rollout.simulator import simulate

    per_prompt = cal["gen_s"] / k1
    sim_kw = dict(groups_per_step=P, group_size=G, train_s=cal["train_s"], sync_s=cal["sync_s"],
                  steps=max(a.steps, 50), dp_efficiency=cal.get("dp_efficiency", a.dp_efficiency))
    sim_base = simulate(workers=1, prompts_per_task=k1, gen_s=cal["gen_s"], max_staleness=0, **sim_kw).samples_per_s
    check = []
    for r in rows:
        sim = simulate(workers=1, prompts_per_task=k1, gen_s=cal["gen_s"], max_staleness=r["max_staleness"],
                       trainer_ranks=r.get("trainer_ranks", 1), **sim_kw)
        check.append({"trainer_ranks": r.get("trainer_ranks", 1), "max_staleness": r["max_staleness"], "measured_samples_per_s": r["samples_per_s"],
                      "simulated_samples_per_s": sim.samples_per_s, "measured_speedup": r["speedup"],
                      "simulated_speedup": sim.samples_per_s / sim_base,
                      "sim_error": sim.samples_per_s / r["samples_per_s"] - 1,
                      "measured_trainer_idle": r["trainer_idle_frac"], "simulated_trainer_idle": sim.trainer_idle_frac,
                      "measured_worker_idle": r["worker_idle_frac"], "simulated_worker_idle": sim.worker_idle_frac})
    proj = []
    for n in [int(x) for x in a.ranks.split(",")]:
        row = {"trainer_ranks": n}
        for m in [int(x) for x in a.workers.split(",")]:
            k = -(-P // m)
            sim = simulate(workers=m, prompts_per_task=k, gen_s=per_prompt * k, max_staleness=a.project_staleness,
                           trainer_ranks=n, **sim_kw)
            row[f"M={m}"] = sim.samples_per_s
        proj.append(row)
    return check, proj


def _report(a, rows: list[dict], cal: dict, P: int, G: int, k1: int, extra: dict) -> dict:
    check, proj = _simulate(a, cal, rows, P, G, k1)
    sim_eff = cal.get("dp_efficiency", a.dp_efficiency)
    best = max((r for r in rows if r["max_staleness"] in (1, 2) and r.get("trainer_ranks", 1) == 1),
               key=lambda r: r["speedup"], default=None)
    # one worker + one trainer overlap at best into max(generation, training + publish) per step
    bound = (cal["gen_s"] * -(-P // k1) + cal["train_s"] + cal["sync_s"]) / max(cal["gen_s"] * -(-P // k1),
                                                                                cal["train_s"] + cal["sync_s"])
    notes = (
        f"Default recipe ({P} prompts x {G} samples per step, {a.steps} steps, seed {a.seed}), one rollout worker and "
        f"one trainer{'' if a.no_pin else ' pinned to their own cores'}; rates over steps 2..N. "
        + (f"Best at max_staleness 1-2: **{best['speedup']:.2f}x** the synchronous samples/s (goal 1.7x; the overlap "
           f"bound for these stage times is {bound:.2f}x), held-out accuracy {best['acc_after']:.3f} vs "
           f"{rows[0]['acc_after']:.3f} synchronous.\n\n" if best else "\n\n")
        + "## Simulator vs measured (1 worker)\n\nCalibrated from the synchronous run: "
        f"{cal['gen_s']:.3f} s per generation task of {k1} prompts, {cal['train_s']:.3f} s per training step, "
        f"{cal['sync_s']:.3f} s per publish.\n\n" + markdown_table(check)
        + f"\n## Projection: samples/s for M rollout workers x N trainer ranks (max_staleness {a.project_staleness}, "
        f"data-parallel efficiency {sim_eff:.2f}, {'measured' if 'dp_efficiency' in cal else 'assumed'})\n\n"
        + markdown_table(proj)
        + "\nThe projection assumes each worker and each rank has its own device, generation time linear in the "
          "prompts per task, and weight publishing as measured here; it is a model of the scheduler, not a "
          "measurement.\n")
    write_report("async", rows, a.out, notes=notes,
                 extra={"calibration": cal, "overlap_bound": bound, "simulator_check": check, "projection": proj,
                        "steps": a.steps, "groups_per_step": P, "group_size": G, "prompts_per_task": k1, **extra},
                 columns=["trainer_ranks", "max_staleness", "samples_per_s", "train_s", "speedup", "trainer_idle_frac", "worker_idle_frac",
                          "staleness_mean", "staleness_max", "acc_before", "acc_after", "acc_delta_vs_sync",
                          "reward_last5", "train_loop_s"])
    return {"rows": rows, "simulator_check": check, "projection": proj, "overlap_bound": bound}


def run(a) -> dict:
    if a.replay:  # re-simulate from a previous report (e.g. another M x N grid) without training again
        prev = json.loads(Path(a.replay).read_text())
        a.steps = prev["steps"]
        return _report(a, prev["rows"], prev["calibration"], prev["groups_per_step"], prev["group_size"],
                       prev["prompts_per_task"], {"replayed_from": str(a.replay),
                                                  **{k: prev[k] for k in ("raw_summaries",) if k in prev}})
    from rl.config import load_config
    from rl.zoo import resolve_model_path

    cfg = load_config(a.config, a.overrides)
    resolve_model_path(cfg.model.path)  # build (or find) the model once, outside the timings
    P, G = cfg.rollout.prompts_per_step, cfg.rollout.num_generations
    k1 = cfg.rollout.prompts_per_task or P  # one worker
    settings = [int(x) for x in a.staleness.split(",")]
    if 0 not in settings:
        settings = [0, *settings]  # the synchronous baseline calibrates the simulator and anchors the ratios
    runs = [(1, ms) for ms in settings]
    for n in [int(x) for x in a.trainer_ranks.split(",") if x.strip() and int(x) > 1]:
        runs += [(n, 0), (n, a.project_staleness)]
    raw, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="orchard-bench-async-") as work:
        for n, ms in runs:
            print(f"[bench async] trainer_ranks={n} max_staleness={ms}: {a.steps} steps ...", flush=True)
            raw[(n, ms)] = _train(a, ms, Path(work) / f"r{n}-ms{ms}", n)
            rows.append(_measure(raw[(n, ms)], ms, G, n))
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["speedup"] = r["samples_per_s"] / base
        r["acc_delta_vs_sync"] = r["acc_after"] - rows[0]["acc_after"]
    cal = _calibrate(raw[(1, 0)], P, k1)
    multi = [r for r in rows if r["trainer_ranks"] > 1 and r["max_staleness"] == 0]
    if multi:  # measured data-parallel efficiency of the largest group: train_s(1) / (N x train_s(N))
        r = max(multi, key=lambda x: x["trainer_ranks"])
        cal["dp_efficiency"] = cal["train_s"] / (r["trainer_ranks"] * r["train_s"])
        cal["dp_efficiency_ranks"] = r["trainer_ranks"]
    return _report(a, rows, cal, P, G, k1,
                   {"raw_summaries": {f"ranks{n}-ms{ms}": raw[(n, ms)]["summary"] for n, ms in raw}})
