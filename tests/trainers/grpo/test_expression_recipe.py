"""The sandboxed-reward recipe end to end on random-3m (a few steps through the real CLI path): completions run in
the bubblewrap sandbox, its outcome metrics reach metrics.jsonl, and held-out accuracy is measured with the same
reward. The tiny-expr warm start and its before/after numbers are in README (`rl train
configs/grpo_expression_tiny.yaml`)."""
import json

import pytest

from rl.cli import launch

pytestmark = pytest.mark.slow


def test_expression_recipe_trains_with_sandbox_metrics(tmp_path):
    run_dir = tmp_path / "run"
    # random-3m never writes a right expression: a length penalty gives the group rewards a spread
    summary = launch("configs/grpo_expression_tiny.yaml", [
        "model.path=random-3m", "max_steps=2", "data.train_size=32", "data.eval_size=8", "rollout.prompts_per_step=4",
        "rollout.num_generations=4", "log.progress=false", "cluster.backend=local", "eval.every=0",
        "checkpoint.every=0", f"run_dir={run_dir}",
        "reward=[{fn: python_expression, kwargs: {min_operators: 1, timeout_s: 1.0}}, "
        "{fn: length_penalty, kwargs: {target: 1, scale: 8}}]"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert len(steps) == 2
    for r in steps:
        fracs = [r[f"reward/python_expression/sandbox/{o}_frac"] for o in ("passed", "failed", "timeout", "crashed",
                                                                             "killed")]
        assert sum(fracs) == pytest.approx(1.0)
        assert "reward/python_expression/sandbox/executions" in r
    assert 0.0 <= summary["eval/accuracy_before"] <= 1.0 and 0.0 <= summary["eval/accuracy_after"] <= 1.0
