"""Broadcast weight sync (`rollout/weight_sync.py`, `cluster.weight_sync: broadcast`): bucketing by hand, a gloo group of
three members passing real tensors, a missing member surfacing as an error, and, on real Ray actors, a rollout worker
SIGKILLed just before a broadcast: the controller rebuilds the group, restarts the worker, sends the weights again,
and the probe check verifies every worker against the new weights."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from rollout.controller import RolloutController
from rollout.engine import EngineSpec
from rollout.runners.single_turn import SingleTurnRunner
from rollout.types import Sample, SamplingParams
from rollout.weight_sync import BroadcastGroup, GroupSpec, SyncHub, buckets
from rollout.workers import WorkerPool
from tests.rollout.test_engines import TOL
from tests.rollout.test_partial import _probe
from trainers.grpo.batch import PromptSampler


def test_buckets_group_runs_of_one_dtype_up_to_the_cap():
    m = [("a", (2, 2), "float32"), ("b", (3,), "float32"), ("c", (4,), "bfloat16"), ("d", (1,), "float32"),
         ("e", (100,), "float32")]  # 16, 12, 8, 4 and 400 bytes
    assert buckets(m, 30 / 2**20) == [[0, 1], [2], [3], [4]]  # a + b = 28 B fit; e alone exceeds the cap
    assert buckets(m, 20 / 2**20) == [[0], [1], [2], [3], [4]]
    assert buckets(m, 1.0) == [[0, 1], [2], [3, 4]]  # a dtype change always starts a new bucket
    assert buckets([], 1.0) == []


def _members(spec: GroupSpec, ranks, fn) -> dict:
    """Run fn(BroadcastGroup) for each rank on its own thread (joining blocks until all have joined)."""
    out: dict = {}

    def run(r):
        try:
            out[r] = fn(BroadcastGroup(spec, r), r)
        except Exception as e:  # noqa: BLE001 - reported to the test
            out[r] = e

    ts = [threading.Thread(target=run, args=(r,)) for r in ranks]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    return out


def test_gloo_group_broadcasts_every_tensor_exactly():
    hub = SyncHub(3, "gloo", timeout_s=30, bucket_mb=64 / 2**20)  # 64-byte buckets: several per dtype
    g = torch.Generator().manual_seed(0)
    sends = [{"w": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g),
              "h": torch.randn(4, 3, generator=g).to(torch.bfloat16), "n": torch.arange(6)} for _ in range(2)]

    def fn(group: BroadcastGroup, r: int):
        if r == 0:
            return [group.send(sd) for sd in sends]
        return [group.receive() for _ in sends]

    out = _members(hub.next_spec(), range(3), fn)
    assert out[0] == [4, 4], out[0]
    for r in (1, 2):
        assert not isinstance(out[r], Exception), out[r]
        for sent, got in zip(sends, out[r]):
            assert list(got) == list(sent)  # names in order
            for k in sent:
                assert got[k].dtype == sent[k].dtype and torch.equal(got[k], sent[k]), (r, k)
    # a new generation is a new group on the same store
    spec = hub.next_spec()
    assert spec.generation == 2
    out = _members(spec, range(3), lambda grp, r: grp.send(sends[0]) if r == 0 else grp.receive())
    assert torch.equal(out[2]["w"], sends[0]["w"])


def test_changed_weights_within_a_generation_are_refused():
    hub = SyncHub(2, "gloo", timeout_s=30)

    def fn(group: BroadcastGroup, r: int):
        if r == 0:
            group.send({"w": torch.zeros(2)})
            with pytest.raises(RuntimeError, match="changed within a generation"):
                group.send({"w": torch.zeros(3)})
            return "ok"
        return group.receive()

    out = _members(hub.next_spec(), range(2), fn)
    assert out[0] == "ok" and torch.equal(out[1]["w"], torch.zeros(2))


def test_a_member_that_never_joins_is_an_error_not_a_hang():
    hub = SyncHub(3, "gloo", timeout_s=2)
    out = _members(hub.next_spec(), range(2), lambda grp, r: "joined")  # rank 2 never comes
    assert all(isinstance(out[r], Exception) for r in range(2)), out


class Source:
    """Trainer rank 0's side of the sync over a real model (TrainerRank does the same with its policy)."""

    def __init__(self, model):
        self.model, self.group = model, None

    def weights(self):
        sd = self.model.state_dict()
        return sd, len(sd)

    def sync_join(self, spec):
        self.group = BroadcastGroup(spec, 0)

    def sync_broadcast(self) -> int:
        return self.group.send(self.model.state_dict())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _broadcast_controller(pool: WorkerPool, prompts, hub: SyncHub) -> RolloutController:
    """A synchronous controller over `pool` with broadcast sync through `hub`: 2 groups of 2 samples per step, two
    steps, every reward 0."""
    def score(task, trajectories):
        return torch.zeros(len(trajectories)), torch.ones(len(trajectories), dtype=torch.bool), {}

    return RolloutController(pool, prompt_ids=prompts, sampler=PromptSampler(len(prompts), 0), score_fn=score,
                             group_size=2, groups_per_step=2, max_staleness=0, prompts_per_task=1,
                             sampling=SamplingParams(max_new_tokens=4, temperature=1.0), seed=0, last_step=2,
                             sync_hub=hub)


@pytest.mark.slow
def test_worker_killed_before_a_broadcast_is_restarted_and_verified(local_ray, model_dir, prompts, base_model,
                                                                   trained_model):
    pool = WorkerPool("ray", 2, EngineSpec("hf", str(model_dir)), SingleTurnRunner(), weights_thread=True)
    ctrl = _broadcast_controller(pool, prompts, SyncHub(3, "gloo", timeout_s=20))
    try:
        ctrl.publish(Source(base_model), 0)
        groups, _ = ctrl.collect(1)
        assert {v for g in groups for s in g.samples for v in s.versions} == {0}
        deadline = time.monotonic() + 60  # a busy machine: worker 1 may still be loading version 0 (worker 0 did both
        while ctrl.calls and time.monotonic() < deadline:  # tasks); kill it idle, before the next broadcast
            ctrl._poll(0.5)
        assert ctrl.stats["sync_groups"] == 1 and not ctrl.calls  # synchronous: nothing in flight now
        victim = ctrl.worker_infos[1].pid
        os.kill(victim, signal.SIGKILL)
        while not _gone(victim):  # its sockets are closed once it is gone (a hang here: pytest-timeout)
            time.sleep(0.05)
        # the probe the trainer would send: prompts with completions, and the new weights' log-probs of them
        (probe_prompts, probe_comps), trained_lp = _probe(prompts, trained_model)
        probe = [Sample(p, c, [0.0] * len(c), [0] * len(c)) for p, c in zip(probe_prompts, probe_comps)]
        ctrl.publish(Source(trained_model), 1, probe, trained_lp)  # the broadcast meets the dead worker
        m: dict = {}
        ctrl.drain_checks(m)
        assert ctrl.stats["worker_restarts"] == 1 and ctrl.stats["sync_failures"] >= 1, ctrl.stats
        assert ctrl.stats["sync_groups"] == 1 + ctrl.stats["sync_failures"], ctrl.stats
        assert victim not in {w.pid for w in ctrl.worker_infos}
        assert m["sync/checks"] == 2 and m["sync/probe_max_abs_err"] < TOL, m  # both workers hold the new weights
        groups, m2 = ctrl.collect(2)
        assert {v for g in groups for s in g.samples for v in s.versions} == {1}
        assert ctrl.stats["duplicates"] == 0 and ctrl.stats["consumed"] == ctrl.stats["draws"] == 4, ctrl.stats
        assert m2["sync/groups_built"] == ctrl.stats["sync_groups"]
    finally:
        ctrl.close()


def test_auto_picks_nccl_broadcast_only_when_every_member_holds_a_whole_gpu():
    from rl.config import load_config
    from rollout.launch import sync_backend, sync_hub

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    whole = ["cluster.trainer_ranks=2", "cluster.gpus_per_trainer=1", "cluster.gpus_per_worker=1"]

    def cfg(*o):
        return load_config("configs/grpo_tiny.yaml", list(o)).cluster

    assert sync_backend(cfg(*whole), gpu) == "nccl"
    assert sync_backend(cfg(*whole), cpu) == "gloo"
    assert sync_backend(cfg("cluster.gpus_per_worker=1"), gpu) == "gloo"  # in-process trainer: GPU unknown to Ray
    one = ["cluster.gpus_per_trainer=1", "cluster.gpus_per_worker=1"]  # in-process trainer on a GPU leased via Ray
    assert sync_backend(cfg(*one), gpu) == "nccl" and sync_backend(cfg("cluster.gpus_per_trainer=0.5", *one[1:]),
                                                                   gpu) == "gloo"
    assert sync_backend(cfg(*whole[:2], "cluster.gpus_per_worker=0.5"), gpu) == "gloo"  # workers share a GPU
    assert sync_hub(cfg(), cpu) is None  # auto on CPU: the object store
    assert sync_hub(cfg(*whole, "cluster.weight_sync=object_store"), gpu) is None
    hub = sync_hub(cfg("cluster.weight_sync=broadcast", "cluster.rollout_workers=3"), cpu)
    assert (hub.backend, hub.world) == ("gloo", 4)


def test_gpu_lease_maps_ray_ids_to_cuda_indices():
    from types import SimpleNamespace

    from rl.cluster import GpuLease

    lease = SimpleNamespace(ids=["5"])
    assert GpuLease.device_index(lease, "") == 5  # nothing hidden: Ray's id is the CUDA index
    assert GpuLease.device_index(lease, "3,5") == 1  # Ray names GPUs by their CUDA_VISIBLE_DEVICES entries
    with pytest.raises(RuntimeError, match="GPU 5.*CUDA_VISIBLE_DEVICES=0,1"):
        GpuLease.device_index(lease, "0,1")


def test_in_process_trainer_leases_its_gpu_from_ray(model_dir):
    """A one-rank trainer with cluster.gpus_per_trainer holds its GPU through Ray, so a rollout worker asking for a
    GPU gets the other one; the lease is given back on close. On CPU Ray counts two GPUs it is told about (there is no
    CUDA here, so the trainer itself stays on the CPU: what is tested is Ray's assignment)."""
    import ray

    from rl.cluster import _loopback_only
    from trainers.grpo.config import GRPOConfig
    from trainers.grpo.ranks import InProcessTrainer

    if ray.is_initialized():
        ray.shutdown()
    with _loopback_only():  # as rl train starts Ray, with two GPUs Ray is told about
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, configure_logging=False)
    try:
        cfg = GRPOConfig.model_validate({"model": {"path": str(model_dir)},
                                         "cluster": {"gpus_per_trainer": 1, "gpus_per_worker": 1}})
        trainer = InProcessTrainer(cfg, model_dir)
        assert ray.available_resources().get("GPU", 0) == 1
        leased = trainer.infos[0]["ray_gpu_ids"]

        @ray.remote(num_gpus=1, num_cpus=0)
        def worker_gpu():
            return [str(i) for i in ray.get_gpu_ids()]

        worker = ray.get(worker_gpu.remote())
        assert len(leased) == 1 and len(worker) == 1 and leased != worker and {*leased, *worker} == {"0", "1"}
        trainer.close()
        while ray.available_resources().get("GPU", 0) < 2:  # Ray frees a killed actor's GPU asynchronously
            time.sleep(0.2)
    finally:
        ray.shutdown()


@pytest.mark.vllm
def test_vllm_worker_takes_broadcast_weights_and_passes_the_probe(local_ray, model_dir, prompts, base_model,
                                                                 trained_model):
    """A vLLM engine in a Ray worker on the broadcast path (gloo here; the same receive and load as under NCCL):
    received on the weights thread, loaded by the ordered update, verified by the probe check, then generating."""
    from rl.errors import OrchardError
    from rollout.vllm_engine import import_vllm

    try:
        import_vllm()
    except OrchardError as e:
        pytest.skip(f"vLLM is not importable here: {e}")
    env = {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}
    pool = WorkerPool("ray", 1, EngineSpec("vllm", str(model_dir)), SingleTurnRunner(), weights_thread=True,
                      env_vars=env)
    ctrl = _broadcast_controller(pool, prompts, SyncHub(2, "gloo", timeout_s=60))
    try:
        src = Source(base_model)  # the trainer: one sender in the group, its model trained in place
        ctrl.publish(src, 0)
        groups, _ = ctrl.collect(1)
        assert {v for g in groups for s in g.samples for v in s.versions} == {0}
        (probe_prompts, probe_comps), trained_lp = _probe(prompts, trained_model)
        probe = [Sample(p, c, [0.0] * len(c), [0] * len(c)) for p, c in zip(probe_prompts, probe_comps)]
        src.model = trained_model
        ctrl.publish(src, 1, probe, trained_lp)
        m: dict = {}
        ctrl.drain_checks(m)
        assert m["sync/checks"] == 1 and m["sync/probe_max_abs_err"] < TOL, m
        assert ctrl.stats["sync_groups"] == 1 and ctrl.stats["sync_failures"] == 0, ctrl.stats
        groups, _ = ctrl.collect(2)
        assert {v for g in groups for s in g.samples for v in s.versions} == {1}
    finally:
        ctrl.close()
