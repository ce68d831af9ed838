"""Ray glue: the `cluster` config section, a quiet local Ray start (or joining a cluster), and CPU pinning.

Locally, `rl train` starts Ray itself: no dashboard web UI unless `cluster.dashboard` (Ray still runs its job-API
process), no auth token written under the home directory (`RAY_AUTH_MODE=disabled`), no usage stats, temp files
under `cluster.temp_dir` (default `<tmp>/orchard-ray-<uid>`), and every port on 127.0.0.1 (`_loopback_only`).
`cluster.address=auto` (or `host:port`) joins a running cluster instead (start one with `ray start --head` on the
head node and `ray start --address=...` on the others); the model directory must then be readable at the same path
on every node.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from typing import Literal

from pydantic import Field, model_validator

from rl.config import Section

log = logging.getLogger("orchard")


class ClusterConfig(Section):
    backend: Literal["auto", "ray", "local"] = "auto"
    """ray: rollout workers are Ray actors (a local Ray is started unless `address` is given); local: one worker in
    the trainer's own process (no Ray; handy for debugging and fast tests). Both go through the same controller.
    auto (resolved when the config loads; the run's config.yaml records the result): local where it is equivalent
    and cheaper, i.e. a synchronous job (max_staleness 0) with one rollout worker and one trainer rank on this
    machine (no `address`, `pin_cpus`, GPUs for workers or trainer, or broadcast sync) and an engine that runs in
    process (not vllm, whose in-process engine changes the process's torch threading); ray otherwise. The
    difference: a Ray worker that dies is restarted and its work replayed, while in process it stops the job."""
    address: str | None = None
    """Join an existing Ray cluster ('auto' or 'host:port') instead of starting a local one."""
    rollout_workers: int = Field(1, ge=1)
    """Rollout workers (Ray actors), each holding one engine. The local backend has exactly one."""
    trainer_ranks: int = Field(1, ge=1)
    """Data-parallel trainer ranks. 1: the trainer runs in the controller's process; N > 1: N Ray actors in one
    torch.distributed process group (gloo on CPU, NCCL on GPU), each updating on 1/N of every batch."""
    trainer_strategy: Literal["ddp", "fsdp2"] = "ddp"
    """How trainer ranks share the model: ddp replicates it and all-reduces gradients; fsdp2 shards parameters,
    gradients and optimizer state (torch FSDP2), for models that do not fit one device (full fine-tuning only)."""
    cpus_per_trainer: float = Field(1.0, gt=0)
    """Ray CPUs reserved by each trainer rank (N > 1); also its torch thread count (rounded, at least 1)."""
    gpus_per_trainer: float = Field(0.0, ge=0)
    """Ray GPUs reserved by each trainer rank. Use 1 on GPU nodes: NCCL needs one GPU per rank. With one rank (the
    trainer in the controller's process) it is a lease held through Ray on the controller's node, and the trainer
    uses the GPU Ray assigns, so no rollout worker is given the same one (a fraction shares it on purpose, e.g. 0.5
    with gpus_per_worker=0.5 on a one-GPU machine); 0 leaves a one-rank trainer on cuda:0, unknown to Ray."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """Ray CPUs reserved by each rollout worker; also its torch thread count (rounded, at least 1) unless
    `worker_threads` says otherwise."""
    worker_threads: int | Literal["auto"] = "auto"
    """Torch threads per rollout worker. auto, on a Ray cluster this process started: with max_staleness 0
    generation and training alternate, so the workers share all of the machine's cores while the trainer waits
    (cores // rollout_workers each; `OMP_NUM_THREADS`, when set, is the number of cores the job may use); with
    max_staleness > 0 they run beside the trainer, so each keeps
    round(cpus_per_worker) threads and the in-process trainer takes the cores left over. When joining a cluster
    (`address`), or with `pin_cpus`: round(cpus_per_worker). An integer fixes it."""
    gpus_per_worker: float = Field(0.0, ge=0)
    """Ray GPUs reserved by each rollout worker (fractions share a GPU)."""
    pin_cpus: bool = False
    """Pin trainer rank r to core r and rollout worker i to core trainer_ranks+i (Linux; wraps around the machine's
    cores), with one torch thread each: what `rl bench async` uses to give each role its own core."""
    max_inflight_per_worker: int = Field(2, ge=1)
    """Tasks queued on a worker at once (2 keeps it busy while the controller collects the previous result)."""
    weight_sync: Literal["auto", "object_store", "broadcast"] = "auto"
    """How new weights reach the rollout workers (both verified by the same probe check). object_store: trainer
    rank 0 puts them into Ray's object store once and each worker fetches them; broadcast: one collective broadcast
    from trainer rank 0 to every worker, in a process group of their own (NCCL when every member holds a whole GPU
    reserved through Ray: gpus_per_trainer >= 1 and gpus_per_worker >= 1; gloo otherwise);
    auto: broadcast where it runs over NCCL, else object_store."""
    weight_sync_timeout_s: float = Field(120.0, gt=0)
    """Broadcast weight sync: how long joining the group or one broadcast may take before it counts as failed (the
    group is then rebuilt, restarting workers that died, and the weights are sent again)."""
    max_worker_restarts: int = Field(3, ge=0)
    """How many times each rollout worker is restarted after dying before the job stops."""
    dashboard: bool = False
    """Start the Ray dashboard (on 127.0.0.1)."""
    temp_dir: str | None = None
    """Ray's session/log directory (default: <system tmp>/orchard-ray-<uid>). Keep it short: Ray's socket paths
    must fit in 107 bytes."""

    @model_validator(mode="after")
    def _check(self):
        if isinstance(self.worker_threads, int) and self.worker_threads < 1:
            raise ValueError(f"cluster.worker_threads={self.worker_threads} must be at least 1 (or auto)")
        if self.backend == "local" and self.rollout_workers != 1:
            raise ValueError(f"cluster.rollout_workers={self.rollout_workers} needs cluster.backend=ray "
                             f"(the local backend runs exactly one worker in the trainer's process)")
        if self.backend == "local" and self.trainer_ranks != 1:
            raise ValueError(f"cluster.trainer_ranks={self.trainer_ranks} needs cluster.backend=ray (trainer ranks "
                             f"are Ray actors; the local backend trains in the controller's process)")
        if self.backend == "local" and self.weight_sync == "broadcast":
            raise ValueError("cluster.weight_sync=broadcast needs cluster.backend=ray (the local backend's one worker "
                             "shares the trainer's process; it gets the weights directly)")
        return self


def resolve_backend(c: ClusterConfig, *, overlap: bool, engine: str) -> None:
    """Turn `backend: auto` into ray or local (see `ClusterConfig.backend`), in place; explicit choices stay."""
    if c.backend != "auto":
        return
    in_process = (not overlap and c.rollout_workers == 1 and c.trainer_ranks == 1 and not c.address
                  and not c.pin_cpus and c.gpus_per_worker == 0 and c.gpus_per_trainer == 0
                  and c.weight_sync != "broadcast" and engine != "vllm")
    c.backend = "local" if in_process else "ray"


def ray_env() -> None:
    """Environment every Orchard process sets before Ray starts (idempotent; users' own values win)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def init_ray(c: ClusterConfig) -> bool:
    """Start or join Ray per `c`. Returns True when this call started it (the caller shuts it down)."""
    ray_env()
    import ray

    if ray.is_initialized():
        return False
    if c.address:
        ray.init(address=c.address, configure_logging=False, log_to_driver=True)
        return True
    temp_dir = c.temp_dir or os.path.join(tempfile.gettempdir(), f"orchard-ray-{os.getuid()}")
    # Enough logical CPUs for every actor even on a small machine (oversubscription is logged, not a deadlock).
    need = c.rollout_workers * c.cpus_per_worker + (c.trainer_ranks * c.cpus_per_trainer if c.trainer_ranks > 1 else 0)
    num_cpus = max(os.cpu_count() or 1, int(need + 0.999))
    if need > (os.cpu_count() or 1):
        ranks = f" + {c.trainer_ranks} trainer ranks x {c.cpus_per_trainer:g}" if c.trainer_ranks > 1 else ""
        log.warning(f"cluster: {c.rollout_workers} rollout workers x {c.cpus_per_worker:g} CPUs{ranks} exceed this "
                    f"machine's {os.cpu_count()} cores; they will share them")
    with _loopback_only():
        ray.init(num_cpus=num_cpus, include_dashboard=c.dashboard, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1", _temp_dir=temp_dir, configure_logging=False, log_to_driver=True)
    return True


@contextlib.contextmanager
def _loopback_only():
    """Keep a local Ray on 127.0.0.1. Ray (2.60) turns `_node_ip_address="127.0.0.1"` into the machine's routable
    address, and its gRPC servers then listen on every interface, unless Ray believes clusters are off (what it
    does on macOS/Windows): `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read by the processes Ray starts, and the same
    flag in this process's already-imported `ray_constants`. Both are put back afterwards, so a later
    `ray.init(address=...)` from this process joins a real cluster normally."""
    from ray._private import ray_constants

    env, flag = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = flag
        if env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = env


def node_ip() -> str:
    """The address other processes reach this one at: Ray's address for this node when Ray is up, else 127.0.0.1
    (a single machine). Used for the rendezvous of the trainer ranks and of the weight-sync group."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return "127.0.0.1"


def gloo_interface(ip: str) -> str | None:
    """The network interface that holds `ip` (None if none does). gloo binds to the address of the machine's
    hostname unless `GLOO_SOCKET_IFNAME` names an interface; on many Linux hosts the hostname resolves to 127.0.1.1,
    which other nodes cannot reach, so process groups pin gloo to the interface of Ray's node address instead."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == ip for a in addrs):
            return name
    return None


class GpuLease:
    """GPUs that Ray reserves for work done in the controller's own process (the one-rank trainer), so Ray does not
    hand the same GPU to a rollout worker: a zero-CPU actor on this node holds them until `release`."""

    def __init__(self, gpus: float):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        @ray.remote(num_cpus=0)
        class _Holder:
            def ids(self) -> list[str]:
                return [str(i) for i in ray.get_gpu_ids()]

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.actor = _Holder.options(num_gpus=gpus, scheduling_strategy=here).remote()
        try:
            self.ids = ray.get(self.actor.ids.remote(), timeout=60)
        except ray.exceptions.GetTimeoutError:
            from rl.errors import OrchardError

            ray.kill(self.actor)
            raise OrchardError(f"cluster.gpus_per_trainer={gpus:g}: Ray could not reserve that on the controller's node "
                               f"within 60 s ({ray.available_resources().get('GPU', 0):g} GPUs free in the cluster)")

    def device_index(self, visible: str | None = None) -> int:
        """This process's CUDA index of the first leased GPU. Ray names GPUs by their CUDA_VISIBLE_DEVICES entries
        (or 0..n-1), so the index is the id's position in this process's CUDA_VISIBLE_DEVICES when it is set."""
        gid = self.ids[0]
        visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
        if not visible:
            return int(gid)
        entries = [v.strip() for v in visible.split(",")]
        if gid not in entries:
            raise RuntimeError(f"Ray reserved GPU {gid} for the trainer, but this process sees only "
                               f"CUDA_VISIBLE_DEVICES={visible}")
        return entries.index(gid)

    def release(self) -> None:
        import ray

        if self.actor is not None:
            ray.kill(self.actor, no_restart=True)
            self.actor = None


def check_resources(c: ClusterConfig) -> None:
    """Fail fast, naming the config keys, when the Ray cluster cannot place every actor the job asks for (Ray would
    otherwise leave the extra actors pending forever)."""
    import ray

    from rl.errors import OrchardError

    ranks = c.trainer_ranks if c.trainer_ranks > 1 else 0
    need = {"CPU": c.rollout_workers * c.cpus_per_worker + ranks * c.cpus_per_trainer,
            "GPU": c.rollout_workers * c.gpus_per_worker + c.trainer_ranks * c.gpus_per_trainer}
    have = ray.available_resources()
    for res, n in need.items():
        if n > 0 and have.get(res, 0.0) + 1e-9 < n:
            raise OrchardError(
                f"the Ray cluster has {have.get(res, 0.0):g} {res}s available but the job needs {n:g}: "
                f"cluster.rollout_workers={c.rollout_workers} x cluster.{res.lower()}s_per_worker="
                f"{getattr(c, res.lower() + 's_per_worker'):g}"
                + (f" + cluster.trainer_ranks={c.trainer_ranks} x cluster.{res.lower()}s_per_trainer="
                   f"{getattr(c, res.lower() + 's_per_trainer'):g}" if ranks else "")
                + " (lower them, or add nodes to the cluster)")


def thread_plan(c: ClusterConfig, overlap: bool) -> tuple[int | None, int]:
    """(torch threads for the in-process trainer, or None to leave its count alone; torch threads per rollout
    worker) per `c.worker_threads` (see there). `overlap`: generation runs while the trainer trains
    (max_staleness > 0)."""
    reserved = max(1, int(round(c.cpus_per_worker)))
    if isinstance(c.worker_threads, int):
        return None, c.worker_threads
    if c.backend != "ray" or c.address or c.pin_cpus:
        return None, reserved
    cores = int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
    if not overlap:
        return None, max(1, cores // c.rollout_workers)
    trainer = max(1, cores - c.rollout_workers * reserved) if c.trainer_ranks == 1 else None
    return trainer, reserved


def place(core: int | None, threads: int | None) -> int | None:
    """An actor's placement: pinned to `core` with `threads` torch threads (default 1) when a core is given, else
    only `threads` torch threads (if given). Returns the core it is pinned to, or None."""
    if core is not None:
        return pin_to_core(core, threads or 1)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return None


def pin_to_core(index: int, threads: int = 1) -> int | None:
    """Pin this process to core `index % cores` and use `threads` torch threads. Returns the core (None off Linux)."""
    import torch

    torch.set_num_threads(max(1, threads))
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0)) if index >= 0 else []
    all_cores = list(range(os.cpu_count() or 1))
    core = all_cores[index % len(all_cores)]
    try:
        os.sched_setaffinity(0, {core})
    except OSError as e:  # e.g. a container that forbids it: keep going unpinned
        log.warning(f"cluster.pin_cpus: could not pin to core {core} ({e}); running unpinned (allowed: {cores})")
        return None
    return core
