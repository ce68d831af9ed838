"""Tiny end-to-end masked-diffusion GRPO jobs through the real CLI path, on a random bidirectional Llama
(`tiny_mdlm_dir`, tests/conftest.py): both recipes train, write a complete run directory, pass the weight-sync probe,
resume to the same metrics, and `rl eval` decodes at another step budget."""
import json
import math

import pytest

from rl.cli import launch, main

pytestmark = pytest.mark.slow


def tiny(mdlm):
    # a random model never writes a right trace: a length penalty gives the rewards a spread
    return [f"model.path={mdlm}", "reward=[exact_match, {fn: length_penalty, kwargs: {target: 20, scale: 8}}]",
            "data.train_size=32", "data.eval_size=8", "rollout.prompts_per_step=2", "rollout.num_generations=4",
            "rollout.max_new_tokens=16", "eval.max_new_tokens=16", "log.progress=false", "trainer.lr=1e-3",
            "cluster.backend=local", "checkpoint.every=2"]


@pytest.mark.parametrize("recipe", ["cj_grpo_tiny", "diffu_grpo_tiny"])
def test_recipe_trains_resumes_and_evaluates(tmp_path, tiny_mdlm_dir, recipe):
    full, part = tmp_path / "full", tmp_path / "part"
    launch(f"configs/{recipe}.yaml", [*tiny(tiny_mdlm_dir), "max_steps=4", f"run_dir={full}"])
    rows = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    for key in ("reward/mean", "loss/pg", "actor/clipfrac", "sync/probe_max_abs_err"):
        assert all(math.isfinite(r[key]) for r in rows[1:] if key in r), key
    assert any("sync/probe_max_abs_err" in r for r in rows)
    assert (full / "checkpoints" / "step-4" / "COMPLETE").is_file() and list((full / "tb").glob("events.*"))
    launch(f"configs/{recipe}.yaml", [*tiny(tiny_mdlm_dir), "max_steps=2", f"run_dir={part}"])
    assert main(["train", "--resume", str(part), "max_steps=4"]) == 0
    resumed = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows[3:], [r for r in resumed if r["step"] >= 3]):
        assert a["reward/mean"] == b["reward/mean"] and a["loss/pg"] == pytest.approx(b["loss/pg"], abs=1e-6)
    assert main(["eval", str(full), "rollout.decoding.schedule=uniform", "rollout.decoding.steps=4"]) == 0
    ev = json.loads((full / "eval.json").read_text())
    assert ev["size"] == 8 and 0.0 <= ev["eval/accuracy"] <= 1.0


def test_async_cj_grpo_with_two_workers_passes_the_probe(tmp_path, tiny_mdlm_dir):
    run = tmp_path / "async"
    launch("configs/cj_grpo_tiny.yaml", [*tiny(tiny_mdlm_dir), "max_steps=3", f"run_dir={run}", "cluster.backend=ray",
                                         "cluster.rollout_workers=2", "max_staleness=1"])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3
    assert max(r.get("offpolicy/staleness_max", 0) for r in rows) <= 1
    assert any("sync/probe_max_abs_err" in r for r in rows)
