"""The `grpo` job: GRPO / Dr. GRPO / DAPO fine-tuning of a causal LM with pluggable rewards."""
from rl.jobs import Job
from trainers.grpo.config import GRPOConfig


def _run(cfg, run_dir):
    from trainers.grpo.trainer import train  # heavy imports (transformers, vLLM) only when the job runs

    return train(cfg, run_dir)


def _evaluate(cfg, ckpt):
    from trainers.grpo.evaluate import evaluate_model

    if ckpt is not None:
        cfg.model.path = str(ckpt / "model")
    return evaluate_model(cfg)


JOB = Job("grpo", GRPOConfig, _run, "GRPO-family RL fine-tuning of a causal LM (Dr. GRPO, DAPO variants)",
          evaluate=_evaluate)
