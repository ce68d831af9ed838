"""The `sac` job: SAC on a continuous-action env, synchronous (workers=0) or APT with async env workers."""
from rl.jobs import Job
from trainers.sac.config import SACConfig


def _run(cfg, run_dir):
    from trainers.sac.train import train

    return train(cfg, run_dir)


def _evaluate(cfg, ckpt):
    from trainers.sac.train import evaluate_checkpoint

    return evaluate_checkpoint(cfg, ckpt)


JOB = Job("sac", SACConfig, _run, "SAC on continuous-action envs; `workers: N` = APT asynchronous env workers (Ray)",
          evaluate=_evaluate)
