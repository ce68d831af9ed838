"""IPPO and MAPPO on JaxMARL envs: every (env, algo) pair trains `--seeds` seeds vmapped in one jitted call.

For each pair: `train = make_train(cfg)` (pure), `jax.jit(jax.vmap(train))` compiled ahead of time (timed apart),
then one call trains all seeds. Reported per pair: the return of the sampled policy before and after training
(`eval_envs` episodes per seed, mean and spread across seeds), env-steps/s of the training call (all seeds
together, compile excluded), compile and wall time. Writes `marl.{json,md,csv}` and one PNG of learning curves
per env (mean across seeds, shaded min-max and +-1 std) under `--out`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
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
    p.add_argument("--stall-s", type=float, default=60.0,
                   help="kill a pair's process when its CPU time has not advanced for this long (an XLA deadlock)")
    p.add_argument("--retries", type=int, default=2, help="times a pair killed as stalled is run again")
    p.add_argument("--worker", nargs=3, metavar=("ALGO", "ENV", "RESULT_JSON"), help=argparse.SUPPRESS)


def _worker_cmd(algo: str, env: str, result: Path, a) -> list[str]:
    cmd = [sys.executable, "-m", "rl.cli", "bench", "marl", "--worker", algo, env, str(result), "--seeds", str(a.seeds),
           "--num-envs", str(a.num_envs), "--num-steps", str(a.num_steps)]
    return cmd + (["--timesteps", str(a.timesteps)] if a.timesteps else [])


def run_pair_watched(algo: str, env: str, a) -> tuple[dict, dict, int]:
    """run_pair in a child process, killed and rerun if it stalls (rl/watchdog.py) -> (row, curve, stalls)."""
    from rl.watchdog import run_watched

    with tempfile.TemporaryDirectory(prefix="orchard-bench-marl-") as d:
        result = Path(d) / "result.json"
        w = run_watched(_worker_cmd(algo, env, result, a), label=f"rl bench marl {env} {algo}", stall_s=a.stall_s,
                        retries=a.retries, env={**os.environ, "TQDM_DISABLE": "1"}, echo=True)
        if w.returncode != 0 or not result.exists():
            raise RuntimeError(f"rl bench marl: training {algo} on {env} failed (exit code {w.returncode})")
        out = json.loads(result.read_text())
    return out["row"], out["curve"], w.stalls


def make_config(algo: str, env: str, a):
    from trainers.marl.config import IPPOConfig, MAPPOConfig

    classes = {"ippo": IPPOConfig, "mappo": MAPPOConfig}
    if algo not in classes:
        from rl.registry import did_you_mean

        raise ValueError(f"unknown algo '{algo}'{did_you_mean(algo, classes)}; known: {', '.join(classes)}")
    timesteps = a.timesteps or BUDGETS.get(env, 200_000)
    return classes[algo](env={"name": env, "num_envs": a.num_envs}, num_steps=a.num_steps, total_timesteps=timesteps,
                         num_seeds=a.seeds, log={"progress": False, "tensorboard": False})


def run_pair(algo: str, env: str, a) -> tuple[dict, dict]:
    """Train `a.seeds` seeds of one (algo, env) pair in one call -> (table row, learning curve)."""
    import jax

    from trainers.marl import ippo, mappo
    from trainers.marl.common import make_trainer, seed_keys

    cfg = make_config(algo, env, a)
    make_train = {"ippo": ippo.make_train, "mappo": mappo.make_train}[algo]
    train = make_train(cfg)  # pure: rng -> {"runner", "metrics", "return_initial", "return_final"}
    trainer = make_trainer(cfg)
    keys = seed_keys(0, a.seeds)  # [S, 2]
    t0 = time.perf_counter()
    compiled = jax.jit(jax.vmap(train)).lower(keys).compile()
    compile_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(keys))
    run_s = time.perf_counter() - t1
    initial, final = np.asarray(out["return_initial"]), np.asarray(out["return_final"])  # [S]
    returns = np.asarray(out["metrics"]["return"])  # [S, U] training-episode return per update
    env_steps = trainer.num_updates * trainer.env_steps_per_update  # per seed
    row = {"env": env, "algo": algo, "seeds": a.seeds, "env_steps_per_seed": env_steps,
           "return_initial": float(initial.mean()), "return_final_mean": float(final.mean()),
           "return_final_std": float(final.std()), "return_final_min": float(final.min()),
           "return_final_max": float(final.max()), "env_steps_per_s": a.seeds * env_steps / run_s,
           "compile_s": compile_s, "train_s": run_s, "wall_s": compile_s + run_s}
    x = (np.arange(returns.shape[1]) + 1) * trainer.env_steps_per_update
    with np.errstate(all="ignore"):  # updates where a seed finished no episode are NaN
        curve = {"env_steps": x.tolist(), "mean": np.nanmean(returns, 0).tolist(), "std": np.nanstd(returns, 0).tolist(),
                 "min": np.nanmin(returns, 0).tolist(), "max": np.nanmax(returns, 0).tolist()}
    return row, curve


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
    ax.set_title(f"{env}: mean return per agent (shaded: +-1 std and min-max across seeds)", fontsize=9)
    ax.set_xlabel("env steps per seed")
    ax.set_ylabel("training episode return")
    ax.legend()
    fig.tight_layout()
    path = out / f"marl_{env}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(a) -> dict:
    if a.worker:
        algo, env, result = a.worker
        row, curve = run_pair(algo, env, a)
        Path(result).write_text(json.dumps({"row": row, "curve": curve}))
        return {"rows": [row]}
    from envs.marl import MARL_ENVS

    envs = [e.strip() for e in a.envs.split(",") if e.strip()]
    algos = [x.strip() for x in a.algos.split(",") if x.strip()]
    for e in envs:
        MARL_ENVS.get(e)  # unknown names fail here, before any training, with a did-you-mean
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, curves, plots = [], {}, []
    for env in envs:
        curves[env] = {}
        for algo in algos:
            row, curves[env][algo], retries = run_pair_watched(algo, env, a)
            row["retries"] = retries
            rows.append(row)
            print(f"{env} {algo}: return {row['return_initial']:.3f} -> {row['return_final_mean']:.3f} "
                  f"+- {row['return_final_std']:.3f}  {row['env_steps_per_s']:.0f} env-steps/s  {row['wall_s']:.0f} s",
                  flush=True)
        plots.append(str(plot_curves(env, curves[env], out)))
    total_s = time.perf_counter() - t0
    episodes = make_config(algos[0], envs[0], a).eval_envs
    notes = (f"Returns: mean per-agent return of the sampled policy over {episodes} episodes per seed, before and after "
             f"training; final mean/std/min/max across {a.seeds} seeds. env_steps_per_s counts one step of every agent "
             f"as one env step, all seeds together, compile excluded. Total wall time {total_s:.0f} s"
             f" (retries: pairs rerun after an XLA deadlock, {sum(r['retries'] for r in rows)} in all; their stalled"
             f" attempts are in the total).\n\n"
             + "\n".join(f"![{Path(p).stem}]({Path(p).name})" for p in plots))
    write_report("marl", rows, out, extra={"curves": curves, "plots": plots, "total_wall_s": total_s}, notes=notes,
                 write_csv=True)
    return {"rows": rows, "plots": plots, "total_wall_s": total_s}
