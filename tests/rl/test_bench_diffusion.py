"""`rl bench diffusion` runs end to end on a tiny random masked-diffusion model and reports every schedule."""
import json

from rl.cli import main


def test_bench_diffusion_reports_every_schedule(tmp_path, make_tiny_mdlm):
    from rl.bench.diffusion import SCHEDULES

    d = make_tiny_mdlm(tmp_path / "mdlm", layers=1, intermediate=64)
    assert main(["bench", "diffusion", "--model", str(d), "--problems", "4", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "diffusion.json").read_text())
    rows = {r["schedule"]: r for r in report["rows"]}
    assert set(rows) == set(SCHEDULES)
    assert rows["uniform L steps"]["forwards_per_sample"] == 32 and rows["ASS (log2 L steps)"]["forwards_per_sample"] == 5
    assert set(report["goal"]) == {"untrained/threshold 0.9", "untrained/CreditDecoding 0.9"}
    assert (tmp_path / "out" / "diffusion.md").is_file()
