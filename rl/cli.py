"""The `rl` command: train, eval, models, plot, bench."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from rl import runtime
from rl.errors import OrchardError

runtime.apply(runtime.BASE)  # runtime defaults every command needs (rl/runtime.py); users can override any of them

EXAMPLES = """\
examples:
  rl train configs/grpo_tiny.yaml                       # the default recipe
  rl train configs/grpo_tiny.yaml max_steps=50 trainer.lr=3e-6 rollout.engine=vllm seed=1 run_dir=runs/x
  rl train configs/grpo_tiny.yaml reward=my_rewards.py:my_fn
  rl train --resume runs/x                              # continue from the last checkpoint
  rl eval runs/x                                        # held-out accuracy (LLMs) or return of its last checkpoint
  rl models build tiny-arith                            # build (and cache) the embedded tiny model
  rl plot runs/x                                        # PNG learning curves into runs/x/plots
  rl train configs/ippo_mpe_spread.yaml                 # multi-agent: IPPO / MAPPO (JAX) on JaxMARL envs
  rl bench rollout                                      # benchmarks: rollout, grpo, envs, marl
"""


def launch(config: str | None, overrides: list[str], resume: str | None = None) -> dict:
    """Load and validate the config, prepare the run directory, run the job, write summary.json."""
    from rl.config import dump_config, get_job, load_config
    from rl.progress import setup_logging
    from rl.rundir import default_run_dir, open_run_dir

    setup_logging()
    if resume:
        run = open_run_dir(resume, must_exist=True)
        cfg = load_config(run.config_path, [*overrides, f"run_dir={run.path}"])
        if run.latest_checkpoint() is None:
            raise OrchardError(f"{run.path} has no complete checkpoint to resume from (checkpoints/step-N/COMPLETE)")
    else:
        cfg = load_config(config, overrides)
        path = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg.algo)
        run = open_run_dir(path)
        if run.latest_checkpoint() is not None:
            raise OrchardError(f"run_dir {path} already holds checkpoints: resume it with `rl train --resume {path}` "
                               f"or choose another run_dir=...")
        run.clear_partial()  # what an earlier attempt here left before its first complete checkpoint
        cfg.run_dir = str(path)
    kept = run.config_path.read_text() if resume else None  # the config the checkpoints were written under
    resumed_from = run.latest_checkpoint()
    run.write_config(dump_config(cfg))
    job = get_job(cfg.algo)
    t0 = time.time()
    if cfg.log.wandb is not None:
        from rl.wandb_log import WandbSink

        run.sinks.append(WandbSink(cfg.log.wandb, run.path, cfg.model_dump(mode="json")))
    try:
        summary = job.run(cfg, run)
    except BaseException:
        if kept is not None and run.latest_checkpoint() == resumed_from:
            # nothing was written under the overrides (e.g. a bad one failed at start): a plain --resume keeps working
            run.write_config(kept)
        raise
    finally:
        for sink in run.sinks:
            sink.close()
    summary.setdefault("wall_time_s", time.time() - t0)
    summary["run_dir"] = str(run.path)
    run.write_summary(summary)
    print(json.dumps(summary, indent=2, default=str))
    return summary


def cmd_train(a: argparse.Namespace) -> int:
    from rl.config import JOBS, describe, get_job, load_config, read_yaml

    if a.list:
        for name in sorted(JOBS):
            try:
                print(f"{name:8s} {get_job(name).description}")
            except ImportError as e:  # a job whose optional dependencies are missing
                print(f"{name:8s} (unavailable: {e})")
        return
    if a.help_config:
        algo = read_yaml(a.config).get("algo", "grpo") if a.config else "grpo"
        print("\n".join(describe(get_job(algo).config_cls)))
        return
    if a.resume and a.config and "=" not in a.config:
        raise OrchardError("give either a CONFIG or --resume RUN_DIR, not both")
    overrides = list(a.overrides)
    config = a.config
    if config and "=" in config:  # `rl train key=value ...` with no config file
        overrides.insert(0, config)
        config = None
    if not config and not a.resume:
        load_config(None, overrides)  # validates; a bare `rl train` runs the typed defaults
    if _watch_stalls(config, overrides, a.resume):
        return _train_watched(config, overrides, a.resume)
    launch(config, overrides, resume=a.resume)
    return 0


def _watch_stalls(config: str | None, overrides: list[str], resume: str | None) -> bool:
    from rl.config import get_job, load_config, read_yaml
    from rl.watchdog import WATCHED

    if os.environ.get(WATCHED) == "1":  # already the watched child
        return False
    if resume:
        p = Path(resume) / "config.yaml"
        algo = read_yaml(p).get("algo") if p.is_file() else None
    else:
        algo = load_config(config, overrides).algo
    return algo is not None and get_job(algo).watch_stalls


def _train_watched(config: str | None, overrides: list[str], resume: str | None) -> int:
    """Run the job in a child `rl train` watched for CPU stalls (XLA:CPU deadlocks, rl/watchdog.py); after a stall
    it is killed and continued with `rl train --resume` from its last checkpoint (from the start if it had none).
    ORCHARD_STALL_S (default 30) and ORCHARD_STALL_RETRIES (default 5) tune it. The restarts needed are printed at
    the end and stored as `stall_restarts` in the run's summary.json."""
    from rl.config import load_config
    from rl.rundir import RunDir, default_run_dir
    from rl.watchdog import StalledError, rl_train_attempts, run_watched

    if resume:
        run_dir = Path(resume)
    else:
        cfg = load_config(config, overrides)
        run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg.algo)
        overrides = [*overrides, f"run_dir={run_dir}"]
    first = ["--resume", str(run_dir), *overrides] if resume else [*([config] if config else []), *overrides]
    stall_s = float(os.environ.get("ORCHARD_STALL_S", "30"))
    try:
        w = run_watched(rl_train_attempts(run_dir, first), label=f"rl train {run_dir}", stall_s=stall_s,
                        retries=int(os.environ.get("ORCHARD_STALL_RETRIES", "5")), echo=True)
    except StalledError as e:
        raise OrchardError(f"{e}; the run's complete checkpoints are intact: `rl train --resume {run_dir}`") from None
    if w.returncode == 0 and (run_dir / "summary.json").is_file():  # the job's summary also says how many reruns it took
        run = RunDir(run_dir)
        run.write_summary({**run.read_summary(), "stall_restarts": w.stalls})
    print(f"rl train: {run_dir} finished after {w.stalls} restart(s) from its last checkpoint (XLA:CPU stalls; "
          f"0 is the healthy case)", file=sys.stderr)
    return w.returncode


def cmd_eval(a: argparse.Namespace) -> None:
    from rl.config import get_job, load_config
    from rl.progress import setup_logging
    from rl.rundir import open_run_dir

    setup_logging()
    target = Path(a.target)
    overrides = list(a.overrides)
    run = None
    if target.is_dir():
        run = open_run_dir(target, must_exist=True)
        cfg = load_config(run.config_path, overrides)
        latest = run.latest_checkpoint()
        ckpt = latest[1] if latest is not None and not any(o.startswith("model.path=") for o in overrides) else None
    else:
        cfg, ckpt = load_config(target, overrides), None
    job = get_job(cfg.algo)
    if job.evaluate is None:
        raise OrchardError(f"`rl eval` has no evaluation for '{cfg.algo}' jobs ({target}); the run's summary.json has "
                           f"the returns of its final policy (per seed)")
    result = job.evaluate(cfg, ckpt)
    print(json.dumps(result, indent=2))
    if run is not None:
        from rl.rundir import atomic_write_text

        atomic_write_text(run.path / "eval.json", json.dumps(result, indent=2))


def cmd_models(a: argparse.Namespace) -> None:
    from rl import zoo

    if a.action == "list":
        for name in zoo.MODELS.names():
            cached = zoo.cache_dir(name, a.seed)
            print(f"{name:16s} {'cached at ' + str(cached) if zoo.is_hf_model_dir(cached) else 'not built'}")
    elif a.action == "build":
        if not a.name:
            raise OrchardError(f"`rl models build NAME`: give a name; zoo models: {', '.join(zoo.MODELS.names())}")
        if a.name not in zoo.MODELS:
            from rl.registry import did_you_mean

            raise OrchardError(f"unknown zoo model '{a.name}'{did_you_mean(a.name, zoo.MODELS.names())}; "
                               f"zoo models: {', '.join(zoo.MODELS.names())}")
        t0 = time.time()
        path = zoo.build(a.name, seed=a.seed, force=a.force)
        print(f"{a.name}: {path} ({time.time() - t0:.1f} s)")
        print(json.dumps(zoo.describe(path), indent=2, default=str))
    elif a.action == "info":
        path = zoo.resolve_model_path(a.name, key="NAME")
        print(json.dumps(zoo.describe(path), indent=2, default=str))


def cmd_merge(a: argparse.Namespace) -> None:
    from rl.merge import MergeSpec, merge

    spec = MergeSpec(method=a.method, experts=tuple(a.experts), base=a.base, density=a.density, lam=a.lam,
                     seed=a.seed, weights=tuple(a.weights) if a.weights else None)
    print(json.dumps(merge(spec, a.out), indent=2))


def cmd_plot(a: argparse.Namespace) -> None:
    from rl.plot import plot_run

    for p in plot_run(a.run_dir):
        print(p)


def cmd_bench(a: argparse.Namespace, rest: list[str]) -> None:
    from rl.bench import BENCHES
    from rl.registry import did_you_mean

    if a.name not in BENCHES:
        raise OrchardError(f"unknown benchmark '{a.name}'{did_you_mean(a.name, BENCHES)}; known: {', '.join(BENCHES)}")
    mod = importlib.import_module(BENCHES[a.name])
    p = argparse.ArgumentParser(prog=f"rl bench {a.name}", description=(mod.__doc__ or "").strip().splitlines()[0])
    p.add_argument("--out", default="bench_results", help="directory for the JSON and markdown reports")
    mod.add_arguments(p)
    mod.run(p.parse_args(rest))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rl", description="Orchard: RL post-training (GRPO for LLMs, classic and multi-agent RL).",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="run a training job from a YAML recipe plus key=value overrides",
                       description="Run a training job. CONFIG is a YAML recipe (overrides of the typed defaults); "
                                   "KEY=VALUE pairs override it with dotted paths (trainer.lr=3e-6).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", nargs="?", help="YAML recipe, e.g. configs/grpo_tiny.yaml")
    t.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint (KEY=VALUE may extend it, e.g. max_steps=200)")
    t.add_argument("--list", action="store_true", help="list the available jobs (algo names)")
    t.add_argument("--help-config", action="store_true", help="print every config key of the job with its default and docs")

    e = sub.add_parser("eval", help="held-out accuracy (LLM jobs) or return (PPO, SAC) of a run's last checkpoint, or of model.path=... under a config")
    e.add_argument("target", help="a run directory or a YAML recipe")
    e.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides (e.g. model.path=/path/to/hf_model)")

    m = sub.add_parser("models", help="the model zoo: tiny models built locally (no hub downloads)")
    m.add_argument("action", choices=["build", "list", "info"])
    m.add_argument("name", nargs="?", help="zoo model name (build) or a model directory / zoo name (info)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--force", action="store_true", help="build again even if cached (the new model replaces the cached one "
                                                        "only if it passes its check)")

    mg = sub.add_parser("merge", help="merge fine-tuned HF model directories or LoRA adapters into one model (rl/merge.py)")
    mg.add_argument("experts", nargs="+", metavar="EXPERT_DIR")
    mg.add_argument("--method", required=True, help="linear, weighted, task_arithmetic, ties, dare, dare_ties")
    mg.add_argument("--base", help="the model the experts were fine-tuned from (task-vector methods, LoRA experts)")
    mg.add_argument("--out", required=True, help="the merged model's directory (must not exist or be empty)")
    mg.add_argument("--weights", type=float, nargs="+", help="one weight per expert")
    mg.add_argument("--density", type=float, default=0.5, help="ties/dare: fraction of each task vector kept")
    mg.add_argument("--lambda", dest="lam", type=float, default=1.0, help="task-vector methods: scale of the merged task vector")
    mg.add_argument("--seed", type=int, default=0, help="dare: seed of the random drop masks")

    pl = sub.add_parser("plot", help="PNG learning curves of a run into RUN_DIR/plots")
    pl.add_argument("run_dir")

    b = sub.add_parser("bench", help="benchmarks (JSON + markdown): rollout, grpo, envs, marl; `rl bench NAME --help`",
                       add_help=False)
    b.add_argument("name")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = build_parser()
    if argv[:1] == ["bench"] and (len(argv) == 1 or argv[1] in ("-h", "--help")):
        from rl.bench import BENCHES

        print("usage: rl bench NAME [options]   (rl bench NAME --help for its options)\nbenchmarks: " + ", ".join(BENCHES))
        return 0
    if argv[:1] == ["bench"] and len(argv) > 1 and not argv[1].startswith("-"):
        a, rest = p.parse_known_args(argv[:2])
        rest = argv[2:]
    else:
        a, rest = p.parse_args(argv), []
    try:
        if a.cmd == "train":
            return cmd_train(a) or 0
        elif a.cmd == "eval":
            cmd_eval(a)
        elif a.cmd == "models":
            cmd_models(a)
        elif a.cmd == "merge":
            cmd_merge(a)
        elif a.cmd == "plot":
            cmd_plot(a)
        elif a.cmd == "bench":
            cmd_bench(a, rest)
    except OrchardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: complete checkpoints are kept; continue with `rl train --resume RUN_DIR`", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
