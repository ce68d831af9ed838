"""IPPO and MAPPO on JaxMARL envs: every (env, algo) pair trains `--seeds` seeds vmapped in one job.

Each pair is an ordinary `rl train` job (algo, env, `--seeds` seeds vmapped, `--segment-updates` PPO updates per
jitted call) in a child process watched by rl/watchdog.py: XLA:CPU (jaxlib 0.10.x) sometimes deadlocks inside a
jitted call (see rl/_xla.py), so a child whose CPU time stops advancing for `--stall-s` seconds is killed and
the job resumed from its last checkpoint (one after every segment), which continues bit-for-bit; the report
counts these `stalls`. Reported per pair: the return of the sampled policy before and after training
(`eval_envs` episodes per seed; mean and spread across seeds), env-steps/s of the training segments (all seeds
together), and wall time (process start, compile, evaluation, checkpoints and any stalls included). Writes
`marl.{json,md,csv}` and one PNG of learning curves per env (per segment: mean across seeds, shaded min-max and
+-1 std) under `--out`.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from rl.bench.common import write_report

DEFAULT_ENVS = "mpe_simple_spread,coin_game,switch_riddle"
BUDGETS = {"mpe_simple_spread": 400_000, "coin_game": 400_000, "switch_riddle": 200_000}
"""Default env-steps per seed (sized so the default 3 envs x 2 algos x 8 seeds finish within 20 minutes on 2 CPU
cores); envs not listed get 200k. `--timesteps` overrides them all."""


def add_arguments(p) -> None:
    p.add_argument("--envs", default=DEFAULT_ENVS, help="comma-separated names from envs.marl.MARL_ENVS")
    p.add_argument("--algos", default="ippo,mappo", help="comma-separated: ippo, mappo")
    p.add_argument("--seeds", type=int, default=8, help="seeds per pair, vmapped in one call")
    p.add_argument("--timesteps", type=int, default=None,
                   help=f"env steps per seed for every env (default per env: {BUDGETS}, else 200000)")
    p.add_argument("--num-envs", type=int, default=16, help="parallel envs per seed")
    p.add_argument("--num-steps", type=int, default=128, help="rollout length per PPO update")
    p.add_argument("--stall-s", type=float, default=30.0,
                   help="kill a pair's process when its CPU time has not advanced for this long (an XLA deadlock)")
    p.add_argument("--retries", type=int, default=5, help="times a stalled pair is resumed (each resume keeps its progress)")
    p.add_argument("--segment-updates", type=int, default=10,
                   help="PPO updates per jitted call; a checkpoint after each (what a stalled pair resumes from)")


def _train_args(algo: str, env: str, run_dir: Path, a) -> list[str]:
    """`rl train` arguments for one pair, with a checkpoint after every segment (what a stalled pair resumes from)."""
    timesteps = a.timesteps or BUDGETS.get(env, 200_000)
    return [f"algo={algo}", f"env.name={env}", f"env.num_envs={a.num_envs}", f"num_steps={a.num_steps}",
            f"total_timesteps={timesteps}", f"num_seeds={a.seeds}", f"segment_updates={a.segment_updates}",
            f"checkpoint.every={a.segment_updates}", "checkpoint.keep=1", "log.progress=false",
            "log.tensorboard=false", f"run_dir={run_dir}"]


def run_pair_watched(algo: str, env: str, a) -> tuple[dict, dict]:
    """One pair as an `rl train` job in a watched child (rl/watchdog.py): on an XLA stall the child is killed and
    the job resumed from its last checkpoint, which continues bit-for-bit. -> (table row, learning curve)."""
    from rl.watchdog import rl_train_attempts, run_watched

    with tempfile.TemporaryDirectory(prefix="orchard-bench-marl-") as d:
        run_dir = Path(d) / "run"
        t0 = time.perf_counter()
        w = run_watched(rl_train_attempts(run_dir, _train_args(algo, env, run_dir, a)), label=f"rl bench marl {env} {algo}",
                        stall_s=a.stall_s, retries=a.retries, env={**os.environ, "TQDM_DISABLE": "1"})
        wall = time.perf_counter() - t0
        if w.returncode != 0 or not (run_dir / "summary.json").exists():
            raise RuntimeError(f"rl bench marl: training {algo} on {env} failed (exit code {w.returncode}):\n"
                               f"{w.output[-3000:]}")
        s = json.loads((run_dir / "summary.json").read_text())
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = np.asarray(s["return_final_per_seed"])
    row = {"env": env, "algo": algo, "seeds": a.seeds, "env_steps_per_seed": s["env_steps_per_seed"],
           "return_initial": s["return_initial"], "return_final_mean": float(final.mean()),
           "return_final_std": float(final.std()), "return_final_min": float(final.min()),
           "return_final_max": float(final.max()), "env_steps_per_s": s["env_steps_per_s"], "wall_s": wall,
           "stalls": w.stalls}
    seg = [r for r in rows if "return/mean" in r]
    curve = {"env_steps": [r["charts/env_steps"] for r in seg], "mean": [r["return/mean"] for r in seg],
             "std": [r["return/std"] for r in seg], "min": [r["return/min"] for r in seg],
             "max": [r["return/max"] for r in seg]}
    return row, curve


def make_config(algo: str, env: str, a):
    from trainers.marl.config import IPPOConfig, MAPPOConfig

    classes = {"ippo": IPPOConfig, "mappo": MAPPOConfig}
    if algo not in classes:
        from rl.registry import did_you_mean

        raise ValueError(f"unknown algo '{algo}'{did_you_mean(algo, classes)}; known: {', '.join(classes)}")
    timesteps = a.timesteps or BUDGETS.get(env, 200_000)
    return classes[algo](env={"name": env, "num_envs": a.num_envs}, num_steps=a.num_steps, total_timesteps=timesteps,
                         num_seeds=a.seeds, log={"progress": False, "tensorboard": False})


def plot_curves(env: str, curves: dict[str, dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for algo, c in curves.items():
        x, mean, std = np.asarray(c["env_steps"]), np.asarray(c["mean"]), np.asarray(c["std"])
        line, = ax.plot(x, mean, label=algo)
        ax.fill_between(x, c["min"], c["max"], color=line.get_color(), alpha=0.12, linewidth=0)
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.25, linewidth=0)
    ax.set_title(f"{env}: mean return per agent\n(shaded: +-1 std and min-max across seeds)", fontsize=9)
    ax.set_xlabel("env steps per seed")
    ax.set_ylabel("training episode return")
    ax.legend()
    fig.tight_layout()
    path = out / f"marl_{env}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(a) -> dict:
    from envs.marl import canonical_marl_env

    envs = [e.strip() for e in a.envs.split(",") if e.strip()]
    algos = [x.strip() for x in a.algos.split(",") if x.strip()]
    envs = [canonical_marl_env(e) for e in envs]  # JaxMARL ids too; unknown names fail here, before any training
    eval_envs = {make_config(algo, envs[0], a).eval_envs for algo in algos}.pop()  # unknown algos fail here too
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, curves, plots = [], {}, []
    for env in envs:
        curves[env] = {}
        for algo in algos:
            row, curves[env][algo] = run_pair_watched(algo, env, a)
            rows.append(row)
            print(f"{env} {algo}: return {row['return_initial']:.3f} -> {row['return_final_mean']:.3f} "
                  f"+- {row['return_final_std']:.3f}  {row['env_steps_per_s']:.0f} env-steps/s  {row['wall_s']:.0f} s  "
                  f"{row['stalls']} rerun(s)",
                  flush=True)
        plots.append(str(plot_curves(env, curves[env], out)))
    total_s = time.perf_counter() - t0
    print(f"rl bench marl: {sum(r['stalls'] for r in rows)} rerun(s) after XLA:CPU stalls in all (column `stalls`)",
          flush=True)
    notes = (f"Returns: mean per-agent return of the sampled policy over {eval_envs} episodes per seed, before and after "
             f"training; final mean/std/min/max across {a.seeds} seeds. env_steps_per_s counts one step of every agent "
             f"as one env step, all seeds together, training segments only. Total wall time {total_s:.0f} s"
             f" (`stalls`: XLA deadlocks after which the pair's job was killed and resumed from its last checkpoint,"
             f" {sum(r['stalls'] for r in rows)} in all; their lost time is in wall_s).\n\n"
             + "\n".join(f"![{Path(p).stem}]({Path(p).name})" for p in plots))
    write_report("marl", rows, out, extra={"curves": curves, "plots": plots, "total_wall_s": total_s}, notes=notes,
                 write_csv=True)
    return {"rows": rows, "plots": plots, "total_wall_s": total_s}
