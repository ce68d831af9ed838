"""Env throughput, three sections, each measured side by side in one run (`--sections` picks them):

- `cartpole`: our vector-env layer vs raw EnvPool (wrapper overhead) and vs gymnasium's SyncVectorEnv, CartPole-v1
  with `--num-envs` envs and pre-drawn random actions.
- `mpe`: JaxMARL MPE simple_spread through our layer (`envs.marl`, jit + vmap over `--mpe-envs` envs + scan over
  `--mpe-steps` steps, random actions), the raw JaxMARL env the same way (our layer's overhead), and the mpe2
  (PettingZoo) Python loop, one env, random actions. One env step = one joint step of all 3 agents.
- `ippo`: IPPO training throughput on simple_spread (16 envs x 128 steps per update per seed), 1 seed vs
  `--ippo-seeds` seeds vmapped in one jitted call, compile excluded.
- `apt`: SAC on Pendulum-v1 (`configs/sac_pendulum.yaml` plus `--apt-overrides`), the synchronous one-env loop vs
  APT with `--apt-workers` Ray env workers: wall time (and env steps) until the mean return of the last 10
  training episodes first reaches `--apt-target`, each run stopping there (`stop_at_target`), at most
  `--apt-max-steps` transitions. Not part of the default sections (a few minutes per round).

The JAX sections (`mpe`, `ippo`) run in a child process watched for XLA deadlocks (rl/watchdog.py).
Within a section the systems are interleaved over `--repeats` rounds (these machines are noisy) and the median of
each is reported with its ratio to the section's baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rl.bench.common import write_report

SECTIONS = ("cartpole", "mpe", "ippo", "apt")
DEFAULT_SECTIONS = ("cartpole", "mpe", "ippo")
JAX_SECTIONS = ("mpe", "ippo")  # run in a watched child process
APT_OVERRIDES = "hidden=64 batch_size=128 learning_starts=500"


def add_arguments(p) -> None:
    p.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default {','.join(DEFAULT_SECTIONS)})")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--task", default="CartPole-v1")
    p.add_argument("--num-envs", type=int, default=64, help="cartpole: vector envs")
    p.add_argument("--steps", type=int, default=2000, help="cartpole: vector steps per measurement")
    p.add_argument("--mpe-envs", type=int, default=1024, help="mpe: envs vmapped in our layer")
    p.add_argument("--mpe-steps", type=int, default=100, help="mpe: scanned steps per jitted call")
    p.add_argument("--mpe2-steps", type=int, default=2000, help="mpe: steps of the mpe2 Python loop per measurement")
    p.add_argument("--ippo-seeds", type=int, default=16, help="ippo: seeds vmapped (compared with 1 seed)")
    p.add_argument("--ippo-updates", type=int, default=5, help="ippo: PPO updates per measurement")
    p.add_argument("--apt-workers", type=int, default=2, help="apt: Ray env workers of the APT run")
    p.add_argument("--apt-target", type=float, default=-400.0, help="apt: return threshold (mean of 10 episodes)")
    p.add_argument("--apt-max-steps", type=int, default=20000, help="apt: transitions per run at most")
    p.add_argument("--stall-s", type=float, default=60.0,
                   help="JAX sections: kill the child when its CPU time has not advanced for this long (XLA deadlock)")
    p.add_argument("--retries", type=int, default=2, help="JAX sections: times a stalled child is run again")
    p.add_argument("--child", nargs=2, metavar=("SECTION", "RESULT_JSON"), help=argparse.SUPPRESS)
    p.add_argument("--apt-overrides", default=APT_OVERRIDES, help=f"apt: config overrides for both runs ('{APT_OVERRIDES}')")


def _median_rates(systems: dict, repeats: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """systems: name -> zero-argument function returning env-steps/s of one measurement; interleaved rounds."""
    rates: dict[str, list[float]] = {k: [] for k in systems}
    for _ in range(repeats):
        for k, measure in systems.items():
            rates[k].append(measure())
    return {k: statistics.median(v) for k, v in rates.items()}, rates


# --- cartpole: EnvPool vs our layer vs gymnasium ---------------------------------------------------------------------
def _rate(env, actions) -> float:
    env.reset()
    step = env.step
    t0 = time.perf_counter()
    for a in actions:
        step(a)
    return len(actions) * len(actions[0]) / (time.perf_counter() - t0)


def cartpole(a) -> tuple[list[dict], dict, str]:
    import envpool

    from envs.vector import make_vec_env

    rng = np.random.default_rng(0)
    actions = [rng.integers(0, 2, size=a.num_envs).astype(np.int32) for _ in range(a.steps)]
    envs = {
        "raw envpool": envpool.make(a.task, env_type="gymnasium", num_envs=a.num_envs, seed=0),
        "orchard (envpool)": make_vec_env(a.task, a.num_envs, 0),
        "gymnasium SyncVectorEnv": make_vec_env(f"gymnasium/{a.task}", a.num_envs, 0),
    }
    short = actions[: max(50, a.steps // 10)]  # gymnasium is far slower
    med, rates = _median_rates({k: (lambda env=env, k=k: _rate(env, short if "gymnasium" in k else actions))
                                for k, env in envs.items()}, a.repeats)
    for env in envs.values():
        env.close()
    raw, ours = med["raw envpool"], med["orchard (envpool)"]
    rows = [{"section": "cartpole", "system": k, "config": f"{a.task}, {a.num_envs} envs", "env_steps_per_s": v,
             "ratio": v / raw, "ratio_to": "raw envpool", "vs_raw_envpool": v / raw,
             "overhead_pct": 100 * (raw / v - 1) if k != "raw envpool" else 0.0} for k, v in med.items()]
    notes = (f"cartpole: wrapper overhead over raw EnvPool {100 * (raw / ours - 1):+.1f}% (goal < 5%); "
             f"Orchard/EnvPool vs gymnasium SyncVectorEnv {ours / med['gymnasium SyncVectorEnv']:.1f}x.")
    return rows, rates, notes


# --- mpe: JaxMARL through our layer vs raw JaxMARL vs the mpe2 Python loop -------------------------------------------
def _jax_stepper(reset, step, num_envs: int, num_steps: int, num_agents: int, num_actions: int):
    """A measure() for a jitted rollout: vmap(step) over envs inside a scan over steps, random actions."""
    import jax

    def rollout(state, key):
        def body(state, k):
            k_act, k_env = jax.random.split(k)
            actions = jax.random.randint(k_act, (num_envs, num_agents), 0, num_actions)  # [E, A]
            state, reward = jax.vmap(step)(jax.random.split(k_env, num_envs), state, actions)
            return state, reward.sum()
        state, rewards = jax.lax.scan(body, state, jax.random.split(key, num_steps))
        return state, rewards.sum()  # the reward sum keeps the whole rollout live

    run = jax.jit(rollout)
    state = jax.jit(jax.vmap(reset))(jax.random.split(jax.random.PRNGKey(0), num_envs))
    box = {"state": state, "key": jax.random.PRNGKey(1)}
    jax.block_until_ready(run(state, box["key"]))  # compile

    def measure() -> float:
        box["key"], k = jax.random.split(box["key"])
        t0 = time.perf_counter()
        box["state"], total = run(box["state"], k)
        jax.block_until_ready(total)
        return num_envs * num_steps / (time.perf_counter() - t0)

    return measure


def _mpe2_stepper(num_steps: int):
    from mpe2 import simple_spread_v3

    env = simple_spread_v3.parallel_env(N=3, max_cycles=25, continuous_actions=False)
    env.reset(seed=0)
    agents = list(env.possible_agents)
    rng = np.random.default_rng(0)
    actions = [dict(zip(agents, rng.integers(0, 5, size=len(agents)).tolist())) for _ in range(num_steps)]

    def measure() -> float:
        env.reset(seed=0)
        t0 = time.perf_counter()
        for act in actions:
            _, _, term, trunc, _ = env.step(act)
            if not env.agents or any(term.values()) or any(trunc.values()):
                env.reset()
        return num_steps / (time.perf_counter() - t0)

    return measure


def mpe(a) -> tuple[list[dict], dict, str]:
    from envs.marl import make_marl_env

    ours = make_marl_env("mpe_simple_spread")
    raw = ours.env  # the JaxMARL SimpleSpreadMPE itself
    A, K = ours.num_agents, ours.num_actions

    def ours_step(key, state, actions):
        _, state, reward, _, _ = ours.step_stacked(key, state, actions)
        return state, reward

    def raw_step(key, state, actions):
        _, state, reward, _, _ = raw.step(key, state, {ag: actions[i] for i, ag in enumerate(raw.agents)})
        return state, reward[raw.agents[0]]

    systems = {
        "orchard envs.marl (JaxMARL)": _jax_stepper(lambda k: ours.reset_stacked(k)[1], ours_step,
                                                    a.mpe_envs, a.mpe_steps, A, K),
        "raw JaxMARL": _jax_stepper(lambda k: raw.reset(k)[1], raw_step, a.mpe_envs, a.mpe_steps, A, K),
        "mpe2 Python loop": _mpe2_stepper(a.mpe2_steps),
    }
    med, rates = _median_rates(systems, a.repeats)
    base = med["mpe2 Python loop"]
    configs = {"mpe2 Python loop": "1 env"}
    rows = [{"section": "mpe", "system": k, "config": f"simple_spread, {configs.get(k, f'{a.mpe_envs} envs x {a.mpe_steps} steps')}",
             "env_steps_per_s": v, "ratio": v / base, "ratio_to": "mpe2 Python loop"} for k, v in med.items()]
    ratio = med["orchard envs.marl (JaxMARL)"] / base
    overhead = 100 * (med["raw JaxMARL"] / med["orchard envs.marl (JaxMARL)"] - 1)
    notes = (f"mpe: our layer vs the mpe2 Python loop {ratio:.0f}x (goal >= 80x: {'met' if ratio >= 80 else 'NOT met'}); "
             f"our layer's overhead over raw JaxMARL {overhead:+.1f}%.")
    return rows, rates, notes


# --- ippo: training throughput, 1 seed vs many seeds vmapped -----------------------------------------------------------
def _ippo_stepper(num_seeds: int, updates: int):
    import jax

    from trainers.marl.common import make_trainer, seed_keys
    from trainers.marl.config import IPPOConfig

    cfg = IPPOConfig(env={"name": "mpe_simple_spread", "num_envs": 16}, num_steps=128)
    trainer = make_trainer(cfg)
    runner = jax.jit(trainer.init_seeds)(seed_keys(0, num_seeds))
    segment = jax.jit(jax.vmap(lambda r: trainer.segment(r, updates))).lower(runner).compile()
    box = {"runner": runner}

    def measure() -> float:
        t0 = time.perf_counter()
        box["runner"], metrics = segment(box["runner"])
        jax.block_until_ready(metrics)
        return num_seeds * updates * trainer.env_steps_per_update / (time.perf_counter() - t0)

    return measure, f"simple_spread, per seed 16 envs x 128 steps, {updates} updates per call"


def ippo(a) -> tuple[list[dict], dict, str]:
    one, config = _ippo_stepper(1, a.ippo_updates)
    many, _ = _ippo_stepper(a.ippo_seeds, a.ippo_updates)
    names = {"IPPO, 1 seed": one, f"IPPO, {a.ippo_seeds} seeds vmapped": many}
    med, rates = _median_rates(names, a.repeats)
    base = med["IPPO, 1 seed"]
    rows = [{"section": "ippo", "system": k, "config": config, "env_steps_per_s": v, "ratio": v / base,
             "ratio_to": "IPPO, 1 seed"} for k, v in med.items()]
    notes = (f"ippo: {a.ippo_seeds} seeds vmapped train at {med[f'IPPO, {a.ippo_seeds} seeds vmapped'] / base:.1f}x the "
             f"env-steps/s of 1 seed (all seeds counted; compile excluded).")
    return rows, rates, notes


# --- apt: SAC wall time to a return threshold, synchronous env loop vs APT env workers ----------------------------------
def _sac_to_target(a, workers: int, seed: int) -> dict:
    from rl.cli import launch

    with tempfile.TemporaryDirectory(prefix="orchard-bench-apt-") as d:
        s = launch("configs/sac_pendulum.yaml", [*a.apt_overrides.split(), f"workers={workers}", f"seed={seed}",
                                                 f"target_return={a.apt_target}", "stop_at_target=true",
                                                 f"total_timesteps={a.apt_max_steps}", "log.progress=false",
                                                 "log.tensorboard=false", "checkpoint.every=0", f"run_dir={d}/run"])
    return s


def apt(a) -> tuple[list[dict], dict, str]:
    names = {"SAC, synchronous env loop": 0, f"SAC-APT, {a.apt_workers} env workers": a.apt_workers}
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for r in range(a.repeats):  # interleaved rounds, seed r
        for name, workers in names.items():
            runs[name].append(_sac_to_target(a, workers, seed=1 + r))
    rows, rates = [], {}
    for name, ss in runs.items():
        times = [s["target/wall_time_s"] for s in ss]
        reached = [t for t in times if t is not None]
        rates[name] = times
        rows.append({"section": "apt", "system": name, "config": f"Pendulum-v1, target {a.apt_target:g}, {a.apt_overrides}",
                     "env_steps_per_s": statistics.median(s["env_steps_per_s"] for s in ss),
                     "time_to_target_s": statistics.median(reached) if len(reached) == len(times) else None,
                     "env_steps_to_target": statistics.median(s["target/env_steps"] or 0 for s in ss) if reached else None,
                     "reached": f"{len(reached)}/{len(times)}"})
    base, ours = rows[0]["time_to_target_s"], rows[1]["time_to_target_s"]
    for row in rows:
        row["ratio"] = base / row["time_to_target_s"] if base and row["time_to_target_s"] else None
        row["ratio_to"] = rows[0]["system"] + " (time to target)"
    if base and ours:
        notes = (f"apt: APT reached return {a.apt_target:g} {base / ours:.2f}x faster than the synchronous loop (median "
                 f"wall time, Ray start included; goal >= 1.5x: {'met' if base / ours >= 1.5 else 'NOT met'}).")
    else:
        notes = f"apt: not every run reached return {a.apt_target:g} within {a.apt_max_steps} transitions (see `reached`)."
    return rows, rates, notes


def _section_in_child(section: str, a) -> tuple[list[dict], dict, str]:
    from rl.watchdog import run_watched

    with tempfile.TemporaryDirectory(prefix="orchard-bench-envs-") as d:
        result = Path(d) / "result.json"
        cmd = [sys.executable, "-m", "rl.cli", "bench", "envs", "--child", section, str(result), "--repeats",
               str(a.repeats), "--mpe-envs", str(a.mpe_envs), "--mpe-steps", str(a.mpe_steps), "--mpe2-steps",
               str(a.mpe2_steps), "--ippo-seeds", str(a.ippo_seeds), "--ippo-updates", str(a.ippo_updates)]
        w = run_watched(cmd, label=f"rl bench envs {section}", stall_s=a.stall_s, retries=a.retries,
                        env={**os.environ, "TQDM_DISABLE": "1"}, echo=True)
        if w.returncode != 0 or not result.exists():
            raise RuntimeError(f"rl bench envs: section {section} failed (exit code {w.returncode})")
        rows, rates, notes = json.loads(result.read_text())
    if w.stalls:
        notes += f" (rerun {w.stalls}x after an XLA deadlock)"
    return rows, rates, notes


def run(a) -> dict:
    fns = {"cartpole": cartpole, "mpe": mpe, "ippo": ippo, "apt": apt}
    if a.child:
        section, result = a.child
        Path(result).write_text(json.dumps(fns[section](a)))
        return {}
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        from rl.registry import did_you_mean

        raise ValueError(f"unknown section '{unknown[0]}'{did_you_mean(unknown[0], SECTIONS)}; known: {', '.join(SECTIONS)}")
    rows, rates, notes = [], {}, []
    for s in sections:
        r, rt, n = _section_in_child(s, a) if s in JAX_SECTIONS else fns[s](a)
        rows += r
        rates[s] = rt
        notes.append(n)
    notes.append(f"Median of {a.repeats} interleaved rounds per section; `ratio` is env-steps/s over `ratio_to`.")
    write_report("envs", rows, a.out, extra={"rates": rates, "sections": sections}, notes="\n\n".join(notes),
                 columns=["section", "system", "config", "env_steps_per_s", "ratio", "ratio_to"]
                 + (["time_to_target_s", "env_steps_to_target", "reached"] if "apt" in sections else []))
    return {"rows": rows}
