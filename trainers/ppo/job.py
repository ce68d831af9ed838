"""The `ppo` job: PPO on a vector env (EnvPool or gymnasium)."""
from rl.jobs import Job
from trainers.ppo.config import PPOConfig


def _run(cfg, run_dir):
    from trainers.ppo.train import train

    return train(cfg, run_dir)


JOB = Job("ppo", PPOConfig, _run, "PPO on vectorised EnvPool / gymnasium envs (CleanRL style)")
