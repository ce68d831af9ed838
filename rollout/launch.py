"""Starting the rollout side of a job from its config sections: the worker pool and the weight-sync transport.

`start_workers` builds the `WorkerPool` from the cluster section (`rl.cluster.ClusterConfig`: backend, workers,
CPUs/GPUs, pinning) and a job's rollout section (its `engine`, `engine_options`, `runner`, as in
`trainers.grpo.config.RolloutConfig`); `sync_hub` picks the transport per `cluster.weight_sync`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from rl.cluster import ClusterConfig, pin_to_core, thread_plan
from rollout.engine import EngineSpec
from rollout.runners import RUNNERS
from rollout.weight_sync import SyncHub
from rollout.workers import WorkerPool

log = logging.getLogger("orchard")


def start_workers(cluster: ClusterConfig, rollout, *, model_dir: Path, dtype: str, seed: int,
                  weights_thread: bool = False, lora: bool = False, overlap: bool = False,
                  estimator: str = "causal", runner=None) -> WorkerPool:
    """Rollout workers per `cluster` (Ray, if used, is already up), each with `rollout.engine` over `model_dir` (its
    options `rollout.engine_options`) and the runner `rollout.runner`. With `cluster.pin_cpus` and one trainer
    rank, this process (the trainer) is pinned to core 0 and the workers to the cores after the trainer ranks.
    overlap: the workers generate while the trainer trains (max_staleness > 0); it decides how the machine's cores
    are split between them (`rl.cluster.thread_plan`). runner: a built runner instead of `rollout.runner`'s."""
    c = cluster
    if c.pin_cpus and c.trainer_ranks == 1:
        pin_to_core(0, 1)
    trainer_threads, worker_threads = thread_plan(c, overlap)
    if trainer_threads:
        torch.set_num_threads(trainer_threads)
    engine = EngineSpec(kind=rollout.engine, model_path=str(model_dir), dtype=dtype, seed=seed,
                        options=rollout.engine_options, lora=lora or None, estimator=estimator)  # lora: engines that load adapters
    runner = runner or RUNNERS.get(rollout.runner).from_config(rollout)
    # vLLM reads its settings from the environment: Ray actors get this process's VLLM_* variables
    env = {k: v for k, v in os.environ.items() if k.startswith("VLLM_")} if rollout.engine == "vllm" else {}
    return WorkerPool(c.backend, c.rollout_workers, engine, runner, cpus_per_worker=c.cpus_per_worker,
                      gpus_per_worker=c.gpus_per_worker, pin_cpus=c.pin_cpus, env_vars=env, first_core=c.trainer_ranks,
                      weights_thread=weights_thread, threads=worker_threads)


def sync_backend(cluster: ClusterConfig, trainer_device: torch.device) -> str:
    """nccl when every member of the broadcast group holds a whole GPU that Ray reserved for it (trainer ranks, or the
    in-process trainer's lease, with cluster.gpus_per_trainer >= 1; workers with cluster.gpus_per_worker >= 1): NCCL
    refuses two members on one GPU. Otherwise gloo, over CPU tensors."""
    whole_gpus = cluster.gpus_per_trainer >= 1 and cluster.gpus_per_worker >= 1
    return "nccl" if whole_gpus and trainer_device.type == "cuda" else "gloo"


def sync_hub(cluster: ClusterConfig, trainer_device: torch.device, weight_sync: str | None = None) -> SyncHub | None:
    """The broadcast weight-sync hub per `cluster.weight_sync` (or `weight_sync`), or None for the Ray object store.
    auto: broadcast when it can run over NCCL (`sync_backend`), else the object store."""
    c = cluster
    mode, backend = weight_sync or c.weight_sync, sync_backend(c, trainer_device)
    if c.backend != "ray" or mode == "object_store" or (mode == "auto" and backend != "nccl"):
        return None
    log.info(f"weight sync: {backend} broadcast from trainer rank 0 to {c.rollout_workers} rollout worker(s)")
    return SyncHub(1 + c.rollout_workers, backend, c.weight_sync_timeout_s)
