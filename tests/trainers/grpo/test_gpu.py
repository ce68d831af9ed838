"""GPU paths of the GRPO job (skipped without CUDA; CI has none). Run them on a GPU machine with `pytest -m gpu`.

The default recipe's trainer and HF rollout engine on CUDA: the verified weight sync must hold at the default
tolerance (fp32 on both sides, same kernels), synchronously and with rollouts two versions ahead.
"""
import json

import pytest
import torch

from rl.cli import launch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TINY = ["max_steps=6", "rollout.prompts_per_step=16", "eval.every=3", "data.eval_size=64", "checkpoint.every=3",
        "log.progress=false", "log.tensorboard=false", "cluster.backend=local", "trainer.sync_check_every=1"]


@pytest.mark.parametrize("max_staleness", [0, 2])
def test_grpo_on_cuda_sync_verified(tmp_path, max_staleness):
    run_dir = tmp_path / f"ms{max_staleness}"
    s = launch("configs/grpo_tiny.yaml", [*TINY, f"max_staleness={max_staleness}", f"run_dir={run_dir}"])
    assert s["device"].startswith("cuda")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    errs = [r["sync/probe_max_abs_err"] for r in rows if "sync/probe_max_abs_err" in r]
    assert errs and max(errs) <= 1e-4  # the job would have stopped otherwise; the metric must be there too
    assert s["rollout_ledger"]["duplicates"] == 0
    assert max(r.get("offpolicy/staleness_max", 0) for r in rows) <= max_staleness
