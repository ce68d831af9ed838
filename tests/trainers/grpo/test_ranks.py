"""Data-parallel trainer ranks on real Ray actors and torch.distributed (gloo): sharding, exactness of 2 ranks
(DDP and FSDP2) against 1 over real optimizer steps, and the async recipe with 2 ranks end to end with resume."""
from __future__ import annotations

import json
import re

import pytest
import torch

from rl.cli import launch, main
from rollout.types import Sample
from trainers.grpo.batch import collate
from trainers.grpo.config import GRPOConfig
from trainers.grpo.policy import read_weights
from trainers.grpo.ranks import InProcessTrainer, RayTrainerGroup
from trainers.grpo.update import shard

pytestmark = pytest.mark.slow


def _batch(n: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        p = torch.randint(3, 60, (2 + i % 3,), generator=g).tolist()
        c = torch.randint(3, 60, (1 + i % 5,), generator=g).tolist()
        samples.append(Sample(p, c, torch.randn(len(c), generator=g).mul(0.1).sub(5.0).tolist(), [0] * len(c)))
    adv = torch.randn(n, generator=g)
    return collate(samples, adv, adv, torch.arange(n), pad_id=0)


def test_shard_pads_with_rows_that_do_not_train():
    b = _batch(7)
    parts = shard(b, 3)
    assert [len(s.batch) for s in parts] == [3, 3, 3] and [s.n_real for s in parts] == [3, 3, 1]
    assert all(s.batch_size == 7 and s.world == 3 for s in parts)
    assert parts[0].total_tokens == float(b.response_mask.sum())
    assert torch.equal(torch.cat([s.batch.input_ids[:s.n_real] for s in parts]), b.input_ids)
    last = parts[2].batch
    assert last.response_mask[1:].sum() == 0 and last.advantages[1:].abs().sum() == 0
    assert b.response_mask[6].sum() > 0  # padding copies row 0 but masks it; the original is untouched
    assert sum(float(s.batch.response_mask.sum()) for s in parts) == float(b.response_mask.sum())


@pytest.fixture
def ray_up():
    from rl.cluster import ClusterConfig, init_ray

    started = init_ray(ClusterConfig(trainer_ranks=2))
    yield
    if started:
        import ray

        ray.shutdown()


def _cfg(model_dir, agg: str, ranks: int = 1, strategy: str = "ddp") -> GRPOConfig:
    return GRPOConfig.model_validate({
        "model": {"path": str(model_dir)}, "rollout": {"max_new_tokens": 5},
        "trainer": {"lr": 1e-3, "micro_batch_size": 3, "loss_agg": agg, "max_grad_norm": 0.05},
        "cluster": {"backend": "ray", "trainer_ranks": ranks, "trainer_strategy": strategy}})


def _two_steps(trainer, batch):
    """Two optimizer steps on the same batch (the second with ratios != 1, clipped by the 0.2 range)."""
    return [trainer.update(batch) for _ in range(2)]


@pytest.mark.parametrize("strategy,agg", [("ddp", "seq_mean_token_mean"), ("ddp", "token_mean"),
                                          ("fsdp2", "seq_mean_token_mean")])
def test_two_ranks_match_one_rank(ray_up, strategy, agg):
    import ray

    from rl.zoo import resolve_model_path

    model_dir = resolve_model_path("random-3m")
    batch = _batch(7)  # 7 rows: shards of 4 and 3 (+1 padding row), micro-batches of 3 -> 2 per rank
    one = InProcessTrainer(_cfg(model_dir, agg), model_dir)
    m1 = _two_steps(one, batch)
    w1, n1 = one.weights()
    group = RayTrainerGroup(_cfg(model_dir, agg, 2, strategy), model_dir)
    try:
        assert [i["rank"] for i in group.infos] == [0, 1] and len({i["pid"] for i in group.infos}) == 2
        m2 = _two_steps(group, batch)
        ref, n2 = group.weights()
        w2 = ray.get(ref)
    finally:
        group.close()
    assert n1 == n2 and set(w1) == set(w2)
    for a, b in zip(m1, m2):
        # the global gradient norm (before clipping at 0.05) catches a missing world-size factor or a wrong share
        assert b["actor/grad_norm"] == pytest.approx(a["actor/grad_norm"], rel=1e-4)
        assert b["loss/pg"] == pytest.approx(a["loss/pg"], rel=1e-4, abs=1e-6)
        # token-mean metrics are averaged per micro-batch, and the micro-batches differ once the batch is sharded
        assert b["actor/clipfrac"] == pytest.approx(a["actor/clipfrac"], abs=0.02)
    assert m1[1]["actor/clipfrac"] > 0  # the second step really exercised clipping
    pre = read_weights(model_dir)
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=2e-5), (k, (w1[k] - w2[k]).abs().max().item())
    assert sum(k in pre and not torch.equal(pre[k], w1[k]) for k in w1) >= len(pre) // 2  # the steps moved weights


# random-3m with a length penalty; 2 rollout workers, 2 trainer ranks, generation 2 versions ahead
RANKS = ["model.path=random-3m", "reward=[exact_match, {fn: length_penalty, kwargs: {target: 1, scale: 4}}]",
         "data.train_size=64", "data.eval_size=8", "rollout.prompts_per_step=4", "rollout.prompts_per_task=2",
         "rollout.num_generations=4", "rollout.max_new_tokens=4", "eval.max_new_tokens=4", "log.progress=false",
         "log.tensorboard=false", "trainer.lr=1e-3", "seed=3", "cluster.rollout_workers=2", "cluster.trainer_ranks=2",
         "max_staleness=2", "checkpoint.every=2"]


def test_async_recipe_with_two_trainer_ranks_and_resume(tmp_path):
    summary = launch("configs/grpo_tiny.yaml", [*RANKS, "max_steps=2", f"run_dir={tmp_path}"])
    assert summary["trainer_ranks"] == 2 and summary["rollout_workers"] == 2
    assert (tmp_path / "checkpoints" / "step-2" / "optimizer.pt").is_file()
    # resumed with the other transport: trainer rank 0 (a Ray actor in the DDP group) broadcasts to the workers
    assert main(["train", "--resume", str(tmp_path), "max_steps=4", "cluster.weight_sync=broadcast"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert "sync/groups_built" not in rows[2] and rows[4]["sync/groups_built"] == 1
    checked = [r for r in rows if "sync/checks" in r]
    # every publish of rank 0's weights reproduced by both workers: 2 workers x 4 versions
    assert sum(r["sync/checks"] for r in checked) == 2 * 4
    assert all(r["sync/probe_max_abs_err"] < 1e-4 for r in checked)
    assert max(r["offpolicy/staleness_max"] for r in rows[1:]) <= 2
    final = json.loads((tmp_path / "summary.json").read_text())
    assert final["rollout_ledger"]["duplicates"] == 0 and final["final_checkpoint"].endswith("step-4")


def test_a_cluster_too_small_for_the_job_is_a_clear_error(ray_up, tmp_path, capsys):
    """A Ray cluster that cannot place every actor: the job says so, naming the keys, instead of waiting forever."""
    code = main(["train", "configs/grpo_tiny.yaml", *RANKS, "cluster.cpus_per_worker=1000", "max_steps=1",
                 f"run_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(r"the Ray cluster has \d+ CPUs available but the job needs 2002: cluster.rollout_workers=2 x "
                     r"cluster.cpus_per_worker=1000 \+ cluster.trainer_ranks=2 x cluster.cpus_per_trainer=1", err), err
