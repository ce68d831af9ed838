"""The `ppo` job: PPO on a vector env (EnvPool or gymnasium)."""
from rl.jobs import Job
from trainers.ppo.config import PPOConfig


def _run(cfg, run_dir):
    from trainers.ppo.train import train

    return train(cfg, run_dir)


def _evaluate(cfg, ckpt):
    from trainers.ppo.train import evaluate_checkpoint

    return evaluate_checkpoint(cfg, ckpt)


JOB = Job("ppo", PPOConfig, _run, "PPO on vectorised EnvPool / gymnasium envs (CleanRL style)", evaluate=_evaluate)
