"""The `rl` command surface: help, listing, error exit codes, and a bench writing its JSON + markdown reports."""
import json

from rl.cli import main


def test_help_and_list(capsys):
    assert main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    assert "grpo" in out and "ppo" in out
    assert main(["bench"]) == 0 and "rollout" in capsys.readouterr().out


def test_config_error_exits_2_with_dotted_path(capsys):
    assert main(["train", "configs/grpo_tiny.yaml", "trainer.lrr=1"]) == 2
    assert "trainer.lrr: unknown key (did you mean 'lr'?)" in capsys.readouterr().err


def test_unknown_bench_suggests(capsys):
    assert main(["bench", "rollot"]) == 2
    assert "did you mean 'rollout'" in capsys.readouterr().err


def test_resume_without_checkpoint_is_an_error(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("algo: grpo\n")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_bench_envs_writes_reports(tmp_path):
    assert main(["bench", "envs", "--sections", "cartpole", "--steps", "20", "--repeats", "1", "--num-envs", "4",
                 "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "envs.json").read_text())
    assert {r["system"] for r in data["rows"]} == {"raw envpool", "orchard (envpool)", "gymnasium SyncVectorEnv"}
    assert all(r["env_steps_per_s"] > 0 for r in data["rows"])
    assert "| system |" in (tmp_path / "envs.md").read_text()


def test_eval_names_jobs_it_cannot_evaluate(tmp_path, capsys):
    assert main(["eval", "configs/ippo_mpe_spread.yaml"]) == 2
    assert "no evaluation for 'ippo' jobs (configs/ippo_mpe_spread.yaml)" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("algo: ppo\n")  # a PPO run directory that never wrote a checkpoint
    assert main(["eval", str(tmp_path)]) == 2
    assert "a PPO policy is evaluated from a run directory with a complete checkpoint" in capsys.readouterr().err
