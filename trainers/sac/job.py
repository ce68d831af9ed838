"""The `sac` job: SAC on a continuous-action env, synchronous (workers=0) or APT with async env workers."""
from rl.jobs import Job
from trainers.sac.config import SACConfig


def _run(cfg, run_dir):
    from trainers.sac.train import train

    return train(cfg, run_dir)


JOB = Job("sac", SACConfig, _run, "SAC on continuous-action envs; `workers: N` = APT asynchronous env workers (Ray)")
