"""The `ippo` and `mappo` jobs: `num_seeds` vmapped training runs on a JaxMARL env, as a normal Orchard job.

The pure update (`MarlTrainer.segment`) runs `segment_updates` PPO updates per jitted call, vmapped over seeds;
between calls the job logs one metrics row (mean/std/min/max across seeds), refreshes the progress bar and
writes checkpoints. A checkpoint holds the whole `RunnerState` of every seed (params, optimizer state, RNG key,
env states, observations, update counter), so `rl train --resume` continues with exactly the numbers an
uninterrupted run would have computed (tested bit-for-bit on CPU in tests/trainers/marl/test_e2e.py).
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np

from rl.jobkit import checkpoint, evaluate_before, make_tracker, start, summarize
from rl.jobs import Job
from rl.rundir import RunDir
from trainers.marl.config import IPPOConfig, MAPPOConfig, MarlConfig

log = logging.getLogger("orchard")

RUNNER_FILE = "runner.msgpack"
META_FILE = "meta.json"


def seed_stats(name: str, per_seed: np.ndarray) -> dict[str, float]:
    """[S] values -> {name/mean, name/std, name/min, name/max} (NaN seeds, e.g. no finished episode, ignored)."""
    x = np.asarray(per_seed, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {}
    return {f"{name}/mean": float(x.mean()), f"{name}/std": float(x.std()), f"{name}/min": float(x.min()),
            f"{name}/max": float(x.max())}


def write_runner(d, runner, meta: dict) -> None:
    """A checkpoint's files: every seed's RunnerState (flax msgpack) and the loop state (JSON)."""
    from flax import serialization

    (d / RUNNER_FILE).write_bytes(serialization.to_bytes(runner))
    (d / META_FILE).write_text(json.dumps(meta))


def train(cfg: MarlConfig, run: RunDir) -> dict:
    import jax
    from flax import serialization

    from trainers.marl.common import make_trainer, seed_keys, split_seed_key

    job = start(run, None)  # JAX: every seed's RNG is a key in its RunnerState
    trainer = make_trainer(cfg)
    keys = seed_keys(cfg.seed, cfg.num_seeds)  # [S, 2]
    k_init, k_eval = jax.vmap(split_seed_key)(keys)  # [S, 2] each
    evaluate = jax.jit(jax.vmap(trainer.evaluate))
    runner = jax.jit(trainer.init_seeds)(k_init)  # RunnerState, every leaf [S, ...]

    meta = job.load_state(META_FILE)
    if job.resumed:
        if meta["num_seeds"] != cfg.num_seeds or meta["env"] != cfg.env.name:
            raise ValueError(f"checkpoint {job.path} is for {meta['num_seeds']} seeds of {meta['env']}, "
                             f"the config asks for {cfg.num_seeds} seeds of {cfg.env.name}")
        runner = serialization.from_bytes(runner, (job.path / RUNNER_FILE).read_bytes())
    return_initial = np.asarray(evaluate_before(  # [S]
        run, meta.get("return_initial"), lambda: np.asarray(evaluate(runner.params, k_eval)),
        lambda r: seed_stats("eval/return", r), cfg.log.tensorboard))
    log.info(f"{cfg.algo} on {cfg.env.name}, {cfg.num_seeds} seed(s): return before training "
             f"{return_initial.mean():.3f} (sampled policy, {cfg.eval_envs} episodes per seed)")

    segments: dict[int, object] = {}  # n updates -> compiled vmapped segment

    def segment(n: int):
        if n not in segments:
            t0 = time.time()
            segments[n] = jax.jit(jax.vmap(lambda r: trainer.segment(r, n))).lower(runner).compile()
            log.info(f"compiled a {n}-update segment for {cfg.num_seeds} seed(s) in {time.time() - t0:.1f} s")
        return segments[n]

    total = trainer.num_updates
    steps_per_update = trainer.env_steps_per_update  # per seed
    tracker = make_tracker(run, cfg.log, total, job.step, {"return/mean": "return", "charts/SPS": "SPS"}, cfg.algo,
                           every=1)
    done, train_time = job.step, 0.0
    try:
        while done < total:
            n = min(cfg.segment_updates, total - done)
            fn = segment(n)
            t0 = time.time()
            runner, metrics = fn(runner)  # metrics: {name: [S, n]}
            metrics = jax.tree.map(np.asarray, metrics)
            dt = time.time() - t0
            train_time += dt
            prev, done = done, done + n
            with np.errstate(all="ignore"):  # a seed with no finished episode in the segment gives NaN
                row = seed_stats("return", np.nanmean(metrics["return"], axis=1))
            row.update({k: float(np.mean(v)) for k, v in metrics.items() if k.startswith("losses/")})
            row.update({"charts/env_steps": done * steps_per_update, "charts/episodes": float(metrics["episodes"].sum()),
                        "charts/SPS": cfg.num_seeds * n * steps_per_update / dt,
                        "charts/learning_rate": cfg.lr * (1.0 - prev / total) if cfg.anneal_lr else cfg.lr})
            tracker.log(done, row, force=True)
            checkpoint(run, done, total, cfg.checkpoint, lambda d: write_runner(d, runner, {
                "update": done, "num_seeds": cfg.num_seeds, "env": cfg.env.name,
                "return_initial": return_initial.tolist()}), prev=prev)
    finally:
        tracker.close()
    return_final = np.asarray(evaluate(runner.params, k_eval))  # [S]
    log.info(f"return (sampled policy): {return_initial.mean():.3f} -> {return_final.mean():.3f} "
             f"(+- {return_final.std():.3f} across seeds)")
    return summarize(job, {"algo": cfg.algo, "env": cfg.env.name, "num_seeds": cfg.num_seeds, "updates": total,
                           "env_steps_per_seed": total * steps_per_update,
                           "return_final_std": float(return_final.std()),
                           "return_initial_per_seed": return_initial.tolist(),
                           "return_final_per_seed": return_final.tolist(),
                           "env_steps_per_s": (done - job.step) * steps_per_update * cfg.num_seeds / train_time
                           if train_time else None},
                     "return", float(return_initial.mean()), float(return_final.mean()), names=("initial", "final"))


JOB = Job("ippo", IPPOConfig, train, "IPPO on JaxMARL envs (JAX, PureJaxRL style, seeds vmapped)", watch_stalls=True)
MAPPO_JOB = Job("mappo", MAPPOConfig, train, "MAPPO (centralised critic) on JaxMARL envs (JAX, seeds vmapped)",
                watch_stalls=True)
