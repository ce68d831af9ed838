"""The README's headline claim, checked on every clean clone: from an empty model cache, `rl models build tiny-arith`
lands in its band, and the default recipe (`make run`: `rl train configs/grpo_tiny.yaml`, as shipped) then gains
at least 20 points of held-out accuracy. A few minutes on 2 cores (the build is most of it)."""
import json

import pytest

from rl import zoo
from rl.cli import main

pytestmark = pytest.mark.slow


def test_fresh_build_and_default_recipe_gain_20_points(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORCHARD_CACHE", str(tmp_path / "cache"))  # empty: the model is built here, from scratch
    assert main(["models", "build", "tiny-arith"]) == 0
    path = zoo.cache_dir("tiny-arith", 0)
    info = json.loads((path / "zoo.json").read_text())
    band, q = info["band"], info["held_out"]
    assert band["greedy_min"] <= q["greedy_accuracy"] <= band["greedy_max"], q
    assert q["pass@8"] >= band["pass_at_k_min"], q
    assert main(["models", "info", "tiny-arith"]) == 0
    assert '"greedy_accuracy"' in capsys.readouterr().out

    run_dir = tmp_path / "run"
    assert main(["train", "configs/grpo_tiny.yaml", f"run_dir={run_dir}", "log.progress=false"]) == 0
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["model"] == str(path)
    assert s["eval/accuracy_before"] == pytest.approx(q["greedy_accuracy"], abs=0.01)  # same 300 problems, greedy
    assert s["eval/accuracy_gain"] >= 0.20, s
