"""`log.wandb`: an offline W&B run beside metrics.jsonl and TensorBoard, under the run directory, holding every
logged row (step 0's evaluation too); a resumed run continues the same W&B run id."""
import json

import pytest

from rl.cli import main
from rl.config import load_config
from rl.errors import ConfigError

TINY = ["model.path=random-3m", "reward=[exact_match, {fn: length_penalty, kwargs: {target: 1, scale: 4}}]",
        "data.train_size=16", "data.eval_size=4", "rollout.prompts_per_step=2", "rollout.num_generations=2",
        "rollout.max_new_tokens=3", "eval.max_new_tokens=3", "log.progress=false", "cluster.backend=local"]


def test_wandb_config_defaults_to_offline_and_is_off_unless_set():
    assert load_config("configs/grpo_tiny.yaml").log.wandb is None
    w = load_config("configs/grpo_tiny.yaml", ["log.wandb.project=mine"]).log.wandb
    assert (w.project, w.mode) == ("mine", "offline")
    with pytest.raises(ConfigError, match=r"log\.wandb\.mode: .*'offline', 'online' or 'disabled'"):
        load_config("configs/grpo_tiny.yaml", ["log.wandb.mode=cloud"])


@pytest.mark.slow
def test_offline_wandb_run_lives_in_the_run_dir_and_resumes(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    args = [*TINY, "log.wandb.project=orchard-test", "checkpoint.every=1"]
    assert main(["train", "configs/grpo_tiny.yaml", *args, "max_steps=2", f"run_dir={run_dir}"]) == 0
    assert (run_dir / "metrics.jsonl").is_file() and list((run_dir / "tb").glob("events.out.tfevents.*"))
    (first,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    run_id = first.name.rsplit("-", 1)[1]
    data = (first / f"run-{run_id}.wandb").read_bytes()
    for key in (b"eval/accuracy", b"reward/mean", b"loss/pg", b"orchard-test"):
        assert key in data, key
    assert main(["train", "--resume", str(run_dir), "max_steps=3"]) == 0
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)  # the same W&B run, continued
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
