"""`rl bench marl` and the MARL sections of `rl bench envs` on tiny budgets: files written, expected rows."""
import csv
import json

import pytest

from rl.cli import main


@pytest.mark.slow
def test_bench_marl_writes_table_csv_and_curves(tmp_path):
    assert main(["bench", "marl", "--envs", "switch_riddle", "--algos", "ippo,mappo", "--seeds", "2",
                 "--timesteps", "512", "--num-envs", "4", "--num-steps", "32", "--segment-updates", "1",
                 "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "marl.json").read_text())
    assert [(r["env"], r["algo"], r["seeds"]) for r in data["rows"]] == [("switch_riddle", "ippo", 2),
                                                                         ("switch_riddle", "mappo", 2)]
    for r in data["rows"]:
        assert r["env_steps_per_s"] > 0 and r["wall_s"] > 0 and r["return_final_std"] >= 0
        assert r["return_final_min"] <= r["return_final_mean"] <= r["return_final_max"]
        assert r["stalls"] >= 0 and r["env_steps_per_seed"] == 512
    curve = data["curves"]["switch_riddle"]["ippo"]
    assert len(curve["env_steps"]) == len(curve["mean"]) == 4  # 512 steps / (4 envs x 32 steps), 1 update per segment
    md = (tmp_path / "marl.md").read_text()
    assert "| env | algo | seeds |" in md and "| switch_riddle | mappo | 2 |" in md
    rows = list(csv.DictReader((tmp_path / "marl.csv").open()))
    assert [(r["env"], r["algo"]) for r in rows] == [("switch_riddle", "ippo"), ("switch_riddle", "mappo")]
    png = tmp_path / "marl_switch_riddle.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_marl_unknown_env_fails_before_training(tmp_path):
    with pytest.raises(KeyError, match="did you mean 'coin_game'"):
        main(["bench", "marl", "--envs", "coin_gme", "--out", str(tmp_path)])


@pytest.mark.slow
def test_bench_envs_marl_sections(tmp_path):
    assert main(["bench", "envs", "--sections", "mpe,ippo", "--repeats", "1", "--mpe-envs", "8", "--mpe-steps", "10",
                 "--mpe2-steps", "50", "--ippo-seeds", "2", "--ippo-updates", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "envs.json").read_text())["rows"]
    assert [(r["section"], r["system"]) for r in rows] == [
        ("mpe", "orchard envs.marl (JaxMARL)"), ("mpe", "raw JaxMARL"), ("mpe", "mpe2 Python loop"),
        ("ippo", "IPPO, 1 seed"), ("ippo", "IPPO, 2 seeds vmapped")]
    assert all(r["env_steps_per_s"] > 0 for r in rows)
    assert "vs the mpe2 Python loop" in (tmp_path / "envs.md").read_text()


@pytest.mark.slow
def test_bench_envs_apt_section_times_both_runs_to_the_target(tmp_path):
    # A random policy scores -1200 to -1600 per Pendulum episode, so -2000 is reached after the first 10 episodes
    # (2000 transitions); learning_starts 2000 keeps both runs update-free, so this is quick and cannot miss.
    assert main(["bench", "envs", "--sections", "apt", "--repeats", "1", "--apt-target", "-2000",
                 "--apt-max-steps", "3000", "--apt-overrides", "hidden=16 batch_size=32 learning_starts=2000",
                 "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "envs.json").read_text())["rows"]
    assert [r["system"] for r in rows] == ["SAC, synchronous env loop", "SAC-APT, 2 env workers"]
    for r in rows:
        assert r["reached"] == "1/1" and r["time_to_target_s"] > 0 and 2000 <= r["env_steps_to_target"] <= 3000
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] > 0
    assert "faster than the synchronous loop" in (tmp_path / "envs.md").read_text()


def test_bench_marl_unknown_algo_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'mappo'"):
        main(["bench", "marl", "--envs", "switch_riddle", "--algos", "ippo,mapo", "--out", str(tmp_path)])
    assert not (tmp_path / "marl.json").exists()
