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
        "log.progress=false", "log.tensorboard=false", "trainer.sync_check_every=1", "cluster.backend=local"]


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


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per trainer rank")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_nccl_trainer_ranks(tmp_path, strategy):
    """Two trainer ranks as Ray actors with a GPU each (NCCL). The rollout worker reserves no GPU and may generate
    on another device than rank 0, so the probe check's tolerance is loosened."""
    run_dir = tmp_path / strategy
    s = launch("configs/grpo_tiny.yaml", [*TINY[:-1], "cluster.backend=ray", "cluster.trainer_ranks=2",
                                          f"cluster.trainer_strategy={strategy}", "cluster.gpus_per_trainer=1",
                                          "trainer.sync_check_tol=1e-3", f"run_dir={run_dir}"])
    assert s["device"].startswith("cuda") and s["trainer_ranks"] == 2
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r["sync/probe_max_abs_err"] for r in rows if "sync/probe_max_abs_err" in r) <= 1e-3
    assert (run_dir / "checkpoints" / "step-6" / "optimizer.pt").is_file()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per member")
def test_nccl_broadcast_group_two_gpus():
    """The broadcast weight-sync group over NCCL: rank 0 on cuda:0 sends, rank 1 on cuda:1 receives, exactly (on the
    GPU, then staged bucket by bucket into CPU memory)."""
    import threading

    from rollout.weight_sync import BroadcastGroup, SyncHub

    hub = SyncHub(2, "nccl", timeout_s=60, bucket_mb=1.0)
    spec = hub.next_spec()
    sd = {"w": torch.randn(1024, 700), "h": torch.randn(33, dtype=torch.bfloat16), "n": torch.arange(9)}
    out: dict = {}

    def member(r: int) -> None:
        torch.cuda.set_device(r)
        g = BroadcastGroup(spec, r, f"cuda:{r}")
        out[r] = g.send(sd) if r == 0 else g.receive()
        out[10 + r] = g.send(sd) if r == 0 else g.receive(to_host=True)  # what rollout workers do

    ts = [threading.Thread(target=member, args=(r,)) for r in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert out[0] == 3
    assert all(out[1][k].device == torch.device("cuda", 1) and torch.equal(out[1][k].cpu(), sd[k]) for k in sd)
    assert all(out[11][k].device.type == "cpu" and torch.equal(out[11][k], sd[k]) for k in sd)


@pytest.mark.skipif(torch.cuda.device_count() < 3, reason="2 trainer ranks and 1 rollout worker, a GPU each")
def test_recipe_with_nccl_broadcast_weight_sync(tmp_path):
    """auto picks the NCCL broadcast when every member holds a whole GPU; every publish is verified."""
    run_dir = tmp_path / "nccl"
    s = launch("configs/grpo_tiny.yaml", [*TINY[:-1], "cluster.backend=ray", "cluster.trainer_ranks=2",
                                          "cluster.gpus_per_trainer=1", "cluster.gpus_per_worker=1",
                                          "max_staleness=2", f"run_dir={run_dir}"])
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["sync/groups_built"] == 1 and s["rollout_ledger"]["sync_failures"] == 0
    assert sum(r.get("sync/checks", 0) for r in rows) == 6 and max(r["sync/probe_max_abs_err"] for r in rows
                                                                   if "sync/checks" in r) <= 1e-4


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="the trainer and 1 rollout worker, a GPU each")
def test_one_rank_trainer_on_a_leased_gpu_with_nccl_broadcast(tmp_path):
    """One trainer rank in the controller's process leases its GPU through Ray (cluster.gpus_per_trainer=1), so the
    worker gets the other GPU and auto picks the NCCL broadcast; every publish is verified."""
    run_dir = tmp_path / "lease"
    s = launch("configs/grpo_tiny.yaml", [*TINY[:-1], "cluster.backend=ray", "cluster.gpus_per_trainer=1",
                                          "cluster.gpus_per_worker=1", "max_staleness=2", f"run_dir={run_dir}"])
    assert s["device"].startswith("cuda:")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["sync/groups_built"] == 1 and s["rollout_ledger"]["sync_failures"] == 0
    assert sum(r.get("sync/checks", 0) for r in rows) == 6 and max(r["sync/probe_max_abs_err"] for r in rows
                                                                   if "sync/checks" in r) <= 1e-4
