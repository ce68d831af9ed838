"""`rl bench diffusion` runs end to end on a tiny random masked-diffusion model and reports every schedule."""
import json

import torch

from rl.cli import main


def test_bench_diffusion_reports_every_schedule(tmp_path):
    from transformers import LlamaForCausalLM

    from rl.bench.diffusion import SCHEDULES
    from rl.zoo import ArchSpec, llama_config
    from trainers.sft.tiny_mdlm import mdlm_tokenizer

    d = tmp_path / "mdlm"
    tok = mdlm_tokenizer()
    cfg = llama_config(ArchSpec(hidden=64, layers=1, heads=1, intermediate=64, max_positions=64), tok)
    cfg.is_causal, cfg.mask_token_id = False, tok.mask_token_id
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    assert main(["bench", "diffusion", "--model", str(d), "--problems", "4", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "diffusion.json").read_text())
    rows = {r["schedule"]: r for r in report["rows"]}
    assert set(rows) == set(SCHEDULES)
    assert rows["uniform L steps"]["forwards_per_sample"] == 32 and rows["ASS (log2 L steps)"]["forwards_per_sample"] == 5
    assert set(report["goal"]) == {"untrained/threshold 0.9", "untrained/CreditDecoding 0.9"}
    assert (tmp_path / "out" / "diffusion.md").is_file()
