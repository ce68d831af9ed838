"""ArCHer vs multi-turn GRPO vs filtered BC on a text env: the same policy, the same budget of env episodes.

Each (env, algo, seed) is an ordinary `rl train` job in a child process (the env's ArCHer recipe, `BENCH_CONFIGS`:
configs/archer_twenty_questions.yaml, configs/archer_guess.yaml for TextArena's GuessTheNumber, the first for any
other env, with `algo=` and `env=`), given `--episodes` env episodes: ArCHer and filtered BC collect `--episodes-per-iter` per iteration,
multi-turn GRPO `--grpo-seeds` x `--group-size`. Every job evaluates on the same fixed held-out episodes (greedy,
test-split objects; GuessTheNumber: seeds never trained on) before training and every `--eval-every-episodes`
episodes. Reported per job: held-out success and return before and after, the episodes at which it first reached
multi-turn GRPO's final held-out return on that env (mean over GRPO's seeds), and wall time. The goal the issue sets: ArCHer reaching GRPO's final return with >= 10x fewer
episodes. Writes `agents.{json,md}` and `agents_<env>.png` (held-out return vs episodes consumed) under `--out`.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rl.bench.common import run_child, write_report

ALGOS = ("archer", "agent_grpo", "filtered_bc")
BENCH_CONFIGS = {"twenty_questions": "configs/archer_twenty_questions.yaml",
                 "textarena/GuessTheNumber-v0": "configs/archer_guess.yaml"}
"""The recipe each env's jobs start from (its policy, sampling and ArCHer settings); other envs: the first."""


def add_arguments(p) -> None:
    p.add_argument("--envs", default=",".join(BENCH_CONFIGS),
                   help="comma-separated text envs (registered names, textarena/<GameId> or file.py:Class)")
    p.add_argument("--algos", default=",".join(ALGOS), help="comma-separated: " + ", ".join(ALGOS))
    p.add_argument("--seeds", type=int, default=1, help="seeds per algorithm (run one after another)")
    p.add_argument("--episodes", type=int, default=256, help="env episodes each job may consume")
    p.add_argument("--episodes-per-iter", type=int, default=8, help="archer / filtered_bc episodes per iteration")
    p.add_argument("--grpo-seeds", type=int, default=4, help="agent_grpo env seeds per iteration")
    p.add_argument("--group-size", type=int, default=8, help="agent_grpo episodes per env seed (G)")
    p.add_argument("--eval-every-episodes", type=int, default=64, help="held-out evaluation interval (episodes)")
    p.add_argument("--eval-episodes", type=int, default=64, help="held-out episodes per evaluation")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per job")
    p.add_argument("--set", action="append", default=[], help="extra key=value override for every job")
    p.add_argument("--throughput-workers", default="1,2",
                   help="also measure rollout throughput through the controller with these numbers of Ray workers "
                        "(comma-separated; empty: skip)")
    p.add_argument("--throughput-episodes", type=int, default=128, help="episodes per throughput measurement")


def job_overrides(env: str, algo: str, seed: int, a, run_dir: Path) -> list[str]:
    per_iter = a.grpo_seeds * a.group_size if algo == "agent_grpo" else a.episodes_per_iter
    iters = max(1, a.episodes // per_iter)
    every = max(1, a.eval_every_episodes // per_iter)
    return [f"algo={algo}", f"env={env}", f"seed={seed}", f"iterations={iters}",
            f"rollout.episodes_per_iter={a.episodes_per_iter}", f"grpo.seeds_per_iter={a.grpo_seeds}",
            f"grpo.group_size={a.group_size}", f"eval.every={every}", f"eval.episodes={a.eval_episodes}",
            "log.progress=false", "log.tensorboard=false", f"run_dir={run_dir}", *a.set]


def curve(run_dir: Path) -> list[tuple[int, float, float]]:
    """(episodes, held-out return, held-out success) at every evaluation of a run."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r.get("episodes", 0), r["eval/return"], r["eval/success"]) for r in rows if "eval/return" in r]


def episodes_to_reach(points, target: float) -> int | None:
    return next((e for e, ret, _ in points if ret >= target), None)


def plot(env: str, curves: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (algo, seed), pts in sorted(curves.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{algo} seed {seed}")
    ax.set_xlabel("env episodes consumed")
    ax.set_ylabel("held-out return (greedy)")
    ax.set_title(f"rl bench agents: {env}")
    ax.legend(fontsize=7)
    path = out / f"agents_{env.replace('/', '_').replace(':', '_')}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def throughput(env: str, n_workers: int, episodes: int, group_size: int = 8) -> dict:
    """Env steps/s and generated tokens/s of the env's recipe policy's episodes (twenty_questions: tiny-agent) through
    the rollout controller and `n_workers` Ray workers (one CPU each; a local Ray started and shut down here), after
    one warm-up step."""
    import ray
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rl.cluster import ClusterConfig, init_ray
    from rl.config import load_config
    from rl.zoo import resolve_model_path
    from rollout.controller import RolloutController
    from rollout.engine import EngineSpec
    from rollout.runners.multi_turn import MultiTurnRunner
    from rollout.types import SamplingParams
    from rollout.workers import WorkerPool
    from trainers.grpo.batch import PromptSampler

    class Source:  # the trainer's side of the weight sync: the (unchanged) policy
        def __init__(self, model):
            self.model = model

        def weights(self):
            sd = self.model.state_dict()
            return sd, len(sd)

    cfg = load_config(BENCH_CONFIGS.get(env, BENCH_CONFIGS["twenty_questions"]), [f"env={env}"])
    model_dir = resolve_model_path(cfg.policy.path)
    runner = MultiTurnRunner(env=env, env_kwargs=cfg.env_kwargs_for(cfg.split), tokenizer_path=str(model_dir),
                             max_context=cfg.rollout.max_context or
                             AutoConfig.from_pretrained(model_dir).max_position_embeddings)
    groups = max(1, episodes // group_size)
    started = init_ray(ClusterConfig())
    root = str(Path(__file__).resolve().parents[2])
    pool = WorkerPool("ray", n_workers, EngineSpec("hf", str(model_dir)), runner, env_vars={"PYTHONPATH": root})

    def score(task, trajs):
        return torch.tensor([sum(s.reward for s in t.steps) for t in trajs]), torch.ones(len(trajs), dtype=torch.bool), {}

    ctrl = RolloutController(pool, prompt_ids=[[s] for s in range(100_000)], sampler=PromptSampler(100_000, 0),
                             score_fn=score, group_size=group_size, groups_per_step=groups, max_staleness=0,
                             prompts_per_task=1, sampling=SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=1.0),
                             seed=0, last_step=2)
    try:
        src = Source(AutoModelForCausalLM.from_pretrained(model_dir))
        ctrl.publish(src, 0)
        ctrl.collect(1)  # warm-up (actor start, first generation)
        ctrl.publish(src, 1)
        t0 = time.perf_counter()
        got, _ = ctrl.collect(2)
        dt = time.perf_counter() - t0
    finally:
        ctrl.close()
        if started:
            ray.shutdown()
    trajs = [t for g in got for t in g.trajectories]
    steps = sum(len(t.steps) for t in trajs)
    tokens = sum(len(s.token_ids) for t in trajs for s in t.steps)
    return {"workers": n_workers, "episodes": len(trajs), "env_steps_per_s": steps / dt, "tokens_per_s": tokens / dt,
            "seconds": dt}


def env_rows(env: str, results: dict, curves: dict) -> tuple[list[dict], float | None, float | None]:
    """One env's rows, GRPO's final held-out return there (the target) and ArCHer's sample-efficiency ratio."""
    grpo_final = [curves[k][-1][1] for k in curves if k[0] == env and k[1] == "agent_grpo"]
    target = sum(grpo_final) / len(grpo_final) if grpo_final else None
    rows = []
    for (e, algo, seed), s in results.items():
        if e != env:
            continue
        pts = curves[(e, algo, seed)]
        reach = episodes_to_reach(pts, target) if target is not None else None
        rows.append({"env": env, "algo": algo, "seed": seed, "episodes": s["episodes"],
                     "success_before": s["eval_success_before"], "success_after": s["eval_success_after"],
                     "return_before": s["eval/return_before"], "return_after": s["eval/return_after"],
                     "episodes_to_grpo_final": reach, "wall_s": round(s["bench_wall_s"], 1)})
    grpo_eps = [r["episodes"] for r in rows if r["algo"] == "agent_grpo"]
    archer_reach = [r["episodes_to_grpo_final"] for r in rows if r["algo"] == "archer"]
    ratio = None
    if grpo_eps and archer_reach and all(x is not None and x > 0 for x in archer_reach):
        ratio = (sum(grpo_eps) / len(grpo_eps)) / (sum(archer_reach) / len(archer_reach))
    return rows, target, ratio


def run(a) -> dict:
    algos = [x for x in a.algos.split(",") if x]
    envs = [x for x in a.envs.split(",") if x]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    curves, results = {}, {}
    with tempfile.TemporaryDirectory(prefix="orchard-bench-agents-") as tmp:
        for e, env in enumerate(envs):
            for algo in algos:
                for seed in range(a.seeds):
                    run_dir = Path(tmp) / f"{e}-{algo}-{seed}"
                    t0 = time.time()
                    cmd = [sys.executable, "-m", "rl.cli", "train", BENCH_CONFIGS.get(env, BENCH_CONFIGS["twenty_questions"]),
                           *job_overrides(env, algo, seed, a, run_dir)]
                    run_child(cmd, label=f"{env} {algo} seed {seed}", timeout=a.timeout, env={**os.environ})
                    summary = json.loads((run_dir / "summary.json").read_text())
                    curves[(env, algo, seed)] = curve(run_dir)
                    results[(env, algo, seed)] = {**summary, "bench_wall_s": time.time() - t0}
    rows, targets, ratios, notes, pngs = [], {}, {}, "", []
    for env in envs:
        r, targets[env], ratios[env] = env_rows(env, results, curves)
        rows += r
        t, q = targets[env], ratios[env]
        notes += (f"{env}: target, multi-turn GRPO's final held-out return: {t if t is None else round(t, 3)} (mean "
                  f"over its seeds); ArCHer's sample-efficiency ratio vs GRPO (GRPO's episodes / ArCHer's episodes to "
                  f"reach that return): {q if q is None else round(q, 2)} (goal >= 10).\n")
        pngs.append(str(plot(env, {k[1:]: v for k, v in curves.items() if k[0] == env}, out)))
    notes += ("`episodes_to_grpo_final`: episodes at the first evaluation at or above the env's target (0 = already "
              "before training; empty = never within the budget).\n")
    tp = [throughput(envs[0], int(n), a.throughput_episodes) for n in a.throughput_workers.split(",") if n.strip()]
    if tp:
        from rl.bench.common import markdown_table

        notes += f"\nRollout throughput through the controller and Ray workers ({envs[0]}):\n\n" + \
            markdown_table(tp)
    write_report("agents", rows, out, extra={"curves": {"-".join(map(str, k)): v for k, v in curves.items()},
                                             "grpo_final_return": targets, "archer_vs_grpo_ratio": ratios,
                                             "throughput": tp, "plots": pngs, "args": vars(a)}, notes=notes)
    return {"rows": rows, "ratio": ratios}
