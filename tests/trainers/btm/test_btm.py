"""The `btm` job: named config errors, and one tiny end-to-end run (2 domains on random-3m, 2 GRPO steps each, run
concurrently as Ray tasks, + the dense baseline, merges, ensemble and table), then a resume that continues only the
expert left unfinished, from its own checkpoint."""
from __future__ import annotations

import json

import pytest

from rl.config import load_config
from rl.errors import ConfigError, OrchardError

TINY = ["seed_model=random-3m", "domains=[{name: add, data: arithmetic}, {name: sub, data: subtraction}]",
        "expert.max_steps=2", "expert.rollout.prompts_per_step=4", "expert.rollout.num_generations=2",
        "expert.rollout.max_new_tokens=4", "expert.eval.max_new_tokens=4", "expert.checkpoint.every=1",
        "expert.trainer.sync_check_every=1", "eval_size=8", "ensemble.dev_sequences=4", "log.tensorboard=false",
        "merge.methods=[linear, ties, dare]"]


def test_recipe_defaults_and_named_errors():
    cfg = load_config("configs/btm_tiny.yaml")
    assert [d.data for d in cfg.domains] == ["arithmetic", "subtraction", "multiplication"]
    with pytest.raises(ConfigError, match=r"expert\.trainer\.lrr: unknown key \(did you mean 'lr'\?\)"):
        load_config("configs/btm_tiny.yaml", ["expert.trainer.lrr=1"])
    with pytest.raises(ConfigError, match=r"expert\.model\.path: set by the BTM job"):
        load_config("configs/btm_tiny.yaml", ["expert.model.path=x"])
    with pytest.raises(ConfigError, match=r"at least 2 domains"):
        load_config("configs/btm_tiny.yaml", ["domains=[{name: a, data: arithmetic}]"])
    with pytest.raises(ConfigError, match=r"domain names must be unique: a repeated"):
        load_config("configs/btm_tiny.yaml", ["domains=[{name: a, data: arithmetic}, {name: a, data: subtraction}]"])
    with pytest.raises(ConfigError, match=r"merge\.methods: .*unknown merge method 'tiez' \(did you mean 'ties'\?\)"):
        load_config("configs/btm_tiny.yaml", ["merge.methods=[tiez]"])
    with pytest.raises(ConfigError, match=r"dense: the domains' rewards differ"):
        load_config("configs/btm_tiny.yaml", ["domains=[{name: a, data: arithmetic}, {name: b, data: subtraction, "
                                              "reward: numeric_match}]"])


def test_domain_without_held_out_split_is_named(tmp_path):
    from rl.cli import launch

    data = tmp_path / "only_train.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    with pytest.raises(ConfigError, match=r"domains\[1\] \('file'.*no held-out split"):
        launch("configs/btm_tiny.yaml", [*TINY, f"domains=[{{name: add, data: arithmetic}}, {{name: file, data: {data}}}]",
                                         f"run_dir={tmp_path / 'run'}"])


@pytest.mark.slow
def test_btm_end_to_end_then_resume_only_the_unfinished_expert(tmp_path):
    from rl.cli import launch

    run = tmp_path / "btm"
    summary = launch("configs/btm_tiny.yaml", [*TINY, f"run_dir={run}"])
    models = [r["model"] for r in summary["table"]]
    assert models == ["seed", "expert:add", "expert:sub", "merge:linear", "merge:ties", "merge:dare", "dense",
                      "ensemble"]
    for r in summary["table"]:
        assert 0.0 <= r["avg"] <= 1.0 and set(r) >= {"add", "sub", "avg"}
    assert {r["model"]: r["ood"] for r in summary["table"] if "ood" in r}.keys() == {"expert:add", "expert:sub"}
    for method in ("linear", "ties", "dare"):
        assert json.loads((run / "merged" / method / "merge.json").read_text())["library"] == "mergekit"
    dense = json.loads((run / "dense" / "summary.json").read_text())
    assert dense["steps"] == 4  # compute-matched: 2 experts x 2 updates
    assert (run / "table.md").read_text().count("| merge:") == 3
    assert len(json.loads((run / "ensemble" / "ensemble.json").read_text())["priors"]) == 2

    # `sub` died after its first checkpoint: drop what it wrote after step 1; `add` and dense are finished
    sub = run / "experts" / "sub"
    (sub / "summary.json").unlink()
    import shutil

    shutil.rmtree(sub / "checkpoints" / "step-2")
    add_mtime = (run / "experts" / "add" / "summary.json").stat().st_mtime
    summary2 = launch(None, [], resume=str(run))
    assert (run / "experts" / "add" / "summary.json").stat().st_mtime == add_mtime  # untouched
    assert "resumed from" in (sub / "train.log").read_text() and (sub / "summary.json").is_file()
    steps = [json.loads(ln)["step"] for ln in (sub / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]  # step 2 re-logged once after the resume from step 1
    assert [r["model"] for r in summary2["table"]] == models


def test_failed_expert_is_named_and_others_finish(tmp_path):
    from rl.cli import launch

    run = tmp_path / "btm"
    bad = [*TINY, "dense=false", "merge.methods=[linear]", "ensemble.enabled=false",
           "domains=[{name: add, data: arithmetic}, {name: bad, data: arithmetic, reward: nowhere.py:fn}]"]
    with pytest.raises(OrchardError, match=r"expert runs failed: bad .*train\.log"):
        launch("configs/btm_tiny.yaml", [*bad, f"run_dir={run}"])
    assert (run / "experts" / "add" / "summary.json").is_file()


def test_branch_from_the_forest_is_the_posterior_weighted_average(tmp_path):
    """branch.from_experts: the new expert's start is Σ_j w_j θ_j with w the domain's EMA posterior over them."""
    import torch
    from safetensors.torch import load_file

    from rl.zoo import ArchSpec, build_tokenizer, init_random_model
    from trainers.btm.job import branch_point

    tok = build_tokenizer()
    dirs = []
    for i in range(2):
        d = tmp_path / f"e{i}"
        init_random_model(ArchSpec(hidden=64, layers=1, heads=1, intermediate=64, max_positions=64), tok,
                          seed=i).save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    cfg = load_config("configs/btm_tiny.yaml", [*TINY, f"branch.from_experts=[{dirs[0]}, {dirs[1]}]"])
    out = tmp_path / "branch" / "add"
    branch_point(cfg, cfg.domains[0], out)
    w = json.loads((out / "merge.json").read_text())["weights"]
    assert abs(sum(w) - 1) < 1e-5 and w[0] != w[1]  # two random models: one explains the dev sequences better
    got, a, b = (load_file(next(p.glob("*.safetensors"))) for p in (out, *dirs))
    for k in got:
        torch.testing.assert_close(got[k], w[0] * a[k] + w[1] * b[k], rtol=0, atol=1e-6)
