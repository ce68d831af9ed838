"""Tiny end-to-end GRPO jobs through the real CLI path: parameters change, the run directory is complete,
resume reproduces the uninterrupted run, and a user's reward file trains."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rl.cli import launch, main

pytestmark = pytest.mark.slow

# random-3m never answers right: a length penalty gives the rewards a spread, so the update has signal
TINY = ["model.path=random-3m", "reward=[exact_match, {fn: length_penalty, kwargs: {target: 1, scale: 4}}]", "data.train_size=64", "data.eval_size=16", "rollout.prompts_per_step=4",
        "rollout.num_generations=4", "rollout.max_new_tokens=4", "eval.max_new_tokens=4", "log.progress=false",
        "trainer.lr=1e-3", "seed=3", "cluster.backend=local"]


def _weights(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_train_changes_parameters_and_writes_complete_run_dir(tmp_path):
    from rl.zoo import resolve_model_path

    run_dir = tmp_path / "run"
    summary = launch("configs/grpo_tiny.yaml", [*TINY, "max_steps=3", f"run_dir={run_dir}"])
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    ckpt = run_dir / "checkpoints" / "step-3"
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "trainer_state.pt").is_file()
    assert (ckpt / "model" / "config.json").is_file() and (ckpt / "model" / "tokenizer.json").is_file()
    before, after = _weights(resolve_model_path("random-3m")), _weights(ckpt / "model")
    changed = [k for k in after if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(after) // 2, f"only {len(changed)}/{len(after)} tensors changed"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for key in ("reward/mean", "actor/clipfrac", "perf/tokens_per_s", "loss/pg"):
        assert all(key in r and r[key] is not None and math.isfinite(r[key]) for r in rows[1:]), key
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["steps"] == 3 and 0.0 <= saved["eval/accuracy_after"] <= 1.0 and saved == {**summary, **saved}
    # rl eval of the run: the last checkpoint's model on the same held-out set
    assert main(["eval", str(run_dir)]) == 0
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["model"] == str(ckpt / "model") and ev["size"] == 16 and ev["eval/accuracy"] == saved["eval/accuracy_after"]


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    launch("configs/grpo_tiny.yaml", [*TINY, "max_steps=4", "checkpoint.every=2", f"run_dir={full}"])
    launch("configs/grpo_tiny.yaml", [*TINY, "max_steps=2", "checkpoint.every=2", f"run_dir={part}"])
    written = (part / "config.yaml").read_text()
    assert "  offpolicy: none\n" in written  # the correction that ran, resolved from max_staleness=0
    # a resume whose override fails at start leaves the run's config as it was
    assert main(["train", "--resume", str(part), "max_steps=4", f"model.path={tmp_path / 'no-such-model'}"]) == 2
    assert (part / "config.yaml").read_text() == written
    # runs written before the default was resolved at load recorded `offpolicy: null`: it resolves like unset
    (part / "config.yaml").write_text(written.replace("  offpolicy: none\n", "  offpolicy: null\n"))
    assert main(["train", "--resume", str(part), "max_steps=4"]) == 0
    assert (part / "config.yaml").read_text() == written.replace("max_steps: 2", "max_steps: 4")
    a = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for k in ("reward/mean", "loss/pg", "actor/grad_norm", "eval/accuracy"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-7), (ra["step"], k)
    wa, wb = _weights(full / "checkpoints" / "step-4" / "model"), _weights(part / "checkpoints" / "step-4" / "model")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_offpolicy_mask_bounds_from_the_command_line_run_and_are_recorded(tmp_path):
    launch("configs/grpo_tiny.yaml", [*TINY, "max_steps=1", "trainer.offpolicy=mask", "trainer.mask_low=0.2",
                                      f"run_dir={tmp_path}"])
    written = (tmp_path / "config.yaml").read_text()
    assert "  offpolicy: mask\n" in written and "  mask_low: 0.2\n" in written and "  mask_high: 8.0\n" in written
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 <= rows[1]["offpolicy/masked_frac"] <= 1.0


def test_fresh_run_refuses_to_overwrite_checkpoints(tmp_path, capsys):
    launch("configs/grpo_tiny.yaml", [*TINY, "max_steps=1", f"run_dir={tmp_path}"])
    assert main(["train", "configs/grpo_tiny.yaml", *TINY, "max_steps=1", f"run_dir={tmp_path}"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_custom_reward_file_trains(tmp_path):
    """A user's own TRL-style reward function from a file drives training: reward for emitting short answers
    that start with a digit rises (random-3m starts near chance)."""
    user = tmp_path / "my_reward.py"
    user.write_text(
        "def starts_with_digit(prompts, completions, answer, **kw):\n"
        "    return [1.0 if c[:1].isdigit() else 0.0 for c in completions]\n")
    run_dir = tmp_path / "run"
    launch("configs/grpo_tiny.yaml", [*TINY, "max_steps=12", "trainer.lr=3e-3", "trainer.warmup_steps=0",
                                      f"reward={user}:starts_with_digit",
                                      f"run_dir={run_dir}", "log.tensorboard=false"])
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    first = sum(r["reward/mean"] for r in rows[:3]) / 3
    last = sum(r["reward/mean"] for r in rows[-3:]) / 3
    assert f"reward/{user.stem}" in json.dumps(rows[0]) or "reward/starts_with_digit/mean" in rows[0]
    assert last > first + 0.2, (first, last)


def test_lora_with_kl_trains_checkpoints_adapter_and_resumes(tmp_path):
    run_dir = tmp_path / "lora"
    lora = ["model.lora.enabled=true", "model.lora.r=4", "trainer.kl_coef=0.05", "trainer.lr=1e-3",
            "checkpoint.every=2", "log.tensorboard=false"]
    launch("configs/grpo_tiny.yaml", [*TINY, *lora, "max_steps=2", f"run_dir={run_dir}"])
    adapter = run_dir / "checkpoints" / "step-2" / "model"
    assert (adapter / "adapter_config.json").is_file()
    assert main(["train", "--resume", str(run_dir), "max_steps=3"]) == 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(r["loss/kl"] >= 0 for r in rows[1:]) and rows[-1]["loss/kl"] > 0  # k3 to the base is live
    w2, w3 = _weights(adapter), _weights(run_dir / "checkpoints" / "step-3" / "model")
    assert any(not torch.equal(w2[k], w3[k]) for k in w2), "resumed LoRA step did not train"


def test_broken_weight_sync_stops_the_job(tmp_path, monkeypatch, capsys):
    """An engine that silently drops part of an update is caught by the probe check, with a named error."""
    from rollout.hf_engine import HFEngine

    real = HFEngine.update_weights

    def drop_mlp(self, named_tensors, version):
        real(self, [(k, v) for k, v in named_tensors if "mlp" not in k], version)

    monkeypatch.setattr(HFEngine, "update_weights", drop_mlp)
    code = main(["train", "configs/grpo_tiny.yaml", *TINY, "max_steps=3", "trainer.lr=1e-2", f"run_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "weight sync check failed for policy version 1: rollout worker 0" in err and "tensors compared" in err
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").glob("step-*"))


def test_sync_check_metric_is_logged(tmp_path):
    launch("configs/grpo_tiny.yaml", [*TINY, "max_steps=2", f"run_dir={tmp_path}", "log.tensorboard=false"])
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()][1:]
    # checks run asynchronously on the worker: each lands in the row of the step during which it finished, and the
    # last publish is verified before the job ends; both publishes (versions 1 and 2) are checked on the one worker
    checked = [r for r in rows if "sync/checks" in r]
    assert sum(r["sync/checks"] for r in checked) == 2
    assert all(0 <= r["sync/probe_max_abs_err"] < 1e-4 for r in checked)


def test_partial_rollouts_on_the_local_backend_are_reproducible_with_one_version_per_sample(tmp_path):
    """The local backend runs calls in order, so no weights arrive mid-task: it generates in chunks (of 2 of the 4
    tokens here) with one version per sample, and the same seed gives the same run."""
    args = [*TINY, "rollout.partial_chunk_tokens=2", "max_steps=2", "log.tensorboard=false"]
    launch("configs/grpo_tiny.yaml", [*args, f"run_dir={tmp_path / 'a'}"])
    launch("configs/grpo_tiny.yaml", [*args, f"run_dir={tmp_path / 'b'}"])
    a, b = ([json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()][1:] for d in "ab")
    assert [r["rollout/mixed_version_frac"] for r in a] == [0.0, 0.0]
    for ra, rb in zip(a, b):
        for k in ("reward/mean", "loss/pg", "actor/grad_norm"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-6, abs=1e-9), (ra["step"], k)


def test_reward_that_is_always_none_warns_then_stops_the_job(tmp_path, capsys, caplog):
    """A reward returning None for every sample gives no signal: each such step warns and logs
    reward/all_none_frac 1.0, and the job stops with an error naming the function after reward_none_patience steps."""
    import logging

    user = tmp_path / "nones.py"
    user.write_text("def never(prompts, completions, **kw):\n    return [None for _ in completions]\n")
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="orchard"):
        code = main(["train", "configs/grpo_tiny.yaml", *TINY, "max_steps=6", "reward_none_patience=2",
                     f"reward={user}:never", f"run_dir={run_dir}", "log.tensorboard=false"])
    assert code == 2
    err = capsys.readouterr().err
    assert "every reward function (never) returned None" in err and "2 steps in a row" in err
    assert "reward_none_patience=2" in err
    assert any("1 in a row" in r.getMessage() for r in caplog.records)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward/all_none_frac"] for r in rows if "reward/all_none_frac" in r] == [1.0]  # step 1, then stopped


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_dynamic_sampling_replaces_discarded_groups_synchronously(tmp_path, backend):
    """DAPO's dynamic sampling at max_staleness 0: with exact match alone random-3m scores 0 everywhere, so every
    group is discarded; each step consumes P x (1 + max_resample_rounds) groups, then skips its update. (Discarded
    groups used to count against the step's batch, so the synchronous loop stopped at step 1 with 'waiting for
    groups but nothing is in flight'.)"""
    run_dir = tmp_path / "run"
    launch("configs/dapo_tiny.yaml", [*TINY, "reward=exact_match", "max_steps=2", "trainer.max_resample_rounds=1",
                                      f"cluster.backend={backend}", f"run_dir={run_dir}", "log.tensorboard=false"])
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    assert [r["dynamic_sampling/skipped_step"] for r in rows] == [1.0, 1.0]
    assert [r["rollout/groups_rejected"] for r in rows] == [8, 8]
    ledger = json.loads((run_dir / "summary.json").read_text())["rollout_ledger"]
    assert ledger["draws"] == ledger["consumed"] == 16 and ledger["duplicates"] == 0
