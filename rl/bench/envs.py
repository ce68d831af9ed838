"""Vector-env throughput: our layer vs raw EnvPool (wrapper overhead) and vs gymnasium's SyncVectorEnv.

Each system steps CartPole-v1 with 64 envs and pre-drawn random actions for the same number of steps; the three
are interleaved over `--repeats` rounds (these machines are noisy) and the median of each is reported.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from rl.bench.common import write_report


def add_arguments(p) -> None:
    p.add_argument("--task", default="CartPole-v1")
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--steps", type=int, default=2000, help="vector steps per measurement")
    p.add_argument("--repeats", type=int, default=5)


def _rate(env, actions) -> float:
    env.reset()
    step = env.step
    t0 = time.perf_counter()
    for a in actions:
        step(a)
    return len(actions) * len(actions[0]) / (time.perf_counter() - t0)


def run(a) -> dict:
    import envpool

    from envs.vector import make_vec_env

    rng = np.random.default_rng(0)
    actions = [rng.integers(0, 2, size=a.num_envs).astype(np.int32) for _ in range(a.steps)]
    systems = {
        "raw envpool": lambda: envpool.make(a.task, env_type="gymnasium", num_envs=a.num_envs, seed=0),
        "orchard (envpool)": lambda: make_vec_env(a.task, a.num_envs, 0),
        "gymnasium SyncVectorEnv": lambda: make_vec_env(f"gymnasium/{a.task}", a.num_envs, 0),
    }
    envs = {k: f() for k, f in systems.items()}
    rates: dict[str, list[float]] = {k: [] for k in systems}
    for _ in range(a.repeats):
        for k, env in envs.items():
            n = actions if "gymnasium" not in k else actions[: max(50, a.steps // 10)]  # gymnasium is far slower
            rates[k].append(_rate(env, n))
    for env in envs.values():
        env.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    raw = med["raw envpool"]
    rows = [{"system": k, "env_steps_per_s": v, "vs_raw_envpool": v / raw,
             "overhead_pct": 100 * (raw / v - 1) if k != "raw envpool" else 0.0} for k, v in med.items()]
    ours = med["orchard (envpool)"]
    notes = (f"Wrapper overhead over raw EnvPool: {100 * (raw / ours - 1):+.1f}% (goal < 5%). "
             f"Orchard/EnvPool vs gymnasium SyncVectorEnv: {ours / med['gymnasium SyncVectorEnv']:.1f}x. "
             f"{a.task}, {a.num_envs} envs, median of {a.repeats} interleaved rounds.")
    write_report("envs", rows, a.out, extra={"rates": rates}, notes=notes)
    return {"rows": rows}
