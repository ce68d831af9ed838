"""Weight sync by collective broadcast (`cluster.weight_sync: broadcast`): trainer rank 0 sends the merged weights
to every rollout worker through a process group of their own (NCCL between GPUs, gloo on CPU).

The other path, `object_store` (the default on CPU), has trainer rank 0 put the weights into Ray's object store
once and every worker fetch them; both end in the same place (the worker's pending weights, loaded in call order
by `update_weights`) and both are verified by the same probe check (`rollout/controller.py`).

- Members: rank 0 is trainer rank 0, rank 1 + i is rollout worker i. The group is built directly on a TCPStore
  that the controller hosts, beside torch.distributed's default group (which the trainer ranks keep for data
  parallelism), so a process can belong to both.
- Generations: each (re)build of the group uses a fresh store prefix, `orchard-sync/<generation>`. When a worker
  restarts, or a broadcast fails, the controller starts a new generation, every member drops its old group and
  joins the new one, and the current weights are broadcast again.
- Transfer: the tensors, in the sender's order, are packed per dtype into flat buckets of at most `bucket_mb` MiB
  and each bucket is one broadcast (a tensor larger than that goes alone); receivers unpack views of their bucket.
  The manifest (names, shapes, dtypes) goes through the store once per generation.
- Failure: every collective and the rendezvous time out after `timeout_s` (`cluster.weight_sync_timeout_s`), so
  a dead member surfaces as an error instead of a hang. With NCCL, `TORCH_NCCL_ASYNC_ERROR_HANDLING` defaults to 2
  here (abort the communicator, keep the process) so that a worker dying mid-broadcast does not take the trainer
  down with it.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from datetime import timedelta

import torch

PREFIX = "orchard-sync"


@dataclass(frozen=True)
class GroupSpec:
    """What a member needs to join one generation of the sync group."""

    host: str
    port: int
    generation: int
    world: int  # 1 (trainer rank 0) + the number of rollout workers
    backend: str  # gloo | nccl
    timeout_s: float
    bucket_mb: float = 256.0


def buckets(manifest: list[tuple[str, tuple, str]], bucket_mb: float) -> list[list[int]]:
    """Indices into `manifest` grouped into runs of one dtype of at most `bucket_mb` MiB (a bigger tensor alone)."""
    cap = bucket_mb * 2**20
    out: list[list[int]] = []
    size, dtype = 0, None
    for j, (_, shape, dt) in enumerate(manifest):
        nbytes = torch.Size(shape).numel() * getattr(torch, dt).itemsize
        if not out or dt != dtype or size + nbytes > cap:
            out.append([])
            size, dtype = 0, dt
        out[-1].append(j)
        size += nbytes
    return out


class SyncHub:
    """The controller's side: hosts the rendezvous store and numbers the generations."""

    def __init__(self, world: int, backend: str, timeout_s: float, bucket_mb: float = 256.0, host: str | None = None):
        from rl.cluster import node_ip

        self.host = host or node_ip()
        self.store = torch.distributed.TCPStore(self.host, 0, is_master=True, wait_for_workers=False,
                                                timeout=timedelta(seconds=timeout_s))
        self.world, self.backend, self.timeout_s, self.bucket_mb = world, backend, timeout_s, bucket_mb
        self.generation = 0

    def next_spec(self) -> GroupSpec:
        self.generation += 1
        return GroupSpec(self.host, self.store.port, self.generation, self.world, self.backend, self.timeout_s,
                         self.bucket_mb)


class BroadcastGroup:
    """One member's side of one generation of the sync group. Joining blocks until every member has joined."""

    def __init__(self, spec: GroupSpec, rank: int, device: torch.device | str | None = None):
        """device: where this member's buffers live; NCCL needs a GPU (default: this process's current one), gloo
        uses the CPU."""
        import torch.distributed as dist

        self.spec, self.rank = spec, rank
        self.device = torch.device("cpu")
        if spec.backend == "nccl":
            self.device = torch.device(device) if device is not None and torch.device(device).type == "cuda" \
                else torch.device("cuda", torch.cuda.current_device())
        timeout = timedelta(seconds=spec.timeout_s)
        base = dist.TCPStore(spec.host, spec.port, is_master=False, timeout=timeout)
        self.store = dist.PrefixStore(f"{PREFIX}/{spec.generation}", base)
        if spec.backend == "nccl":
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(self.store, rank, spec.world, opts)
        elif spec.backend == "gloo":
            from rl.cluster import node_ip

            opts = dist.ProcessGroupGloo._Options()
            opts._timeout = timeout
            opts._devices = [dist.ProcessGroupGloo.create_device(hostname=node_ip())]  # this node's Ray address
            self.pg = dist.ProcessGroupGloo(self.store, rank, spec.world, opts)
        else:
            raise ValueError(f"weight sync backend {spec.backend!r}: expected gloo or nccl")
        self.manifest: list[tuple[str, tuple, str]] | None = None
        self.sent = 0  # broadcasts sent (rank 0) or received in this generation

    def _broadcast(self, t: torch.Tensor) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = 0, 0
        opts.timeout = timedelta(seconds=self.spec.timeout_s)
        self.pg.broadcast([t], opts).wait()

    def send(self, weights: dict[str, torch.Tensor]) -> int:
        """Rank 0: broadcast `weights` (name -> tensor). Returns the number of tensors sent."""
        if self.rank != 0:
            raise RuntimeError("BroadcastGroup.send: only rank 0 (trainer rank 0) sends")
        manifest = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in weights.items()]
        if self.manifest is None:
            self.store.set("manifest", pickle.dumps(manifest))
            self.manifest = manifest
        elif manifest != self.manifest:
            raise RuntimeError("BroadcastGroup.send: the weights' names, shapes or dtypes changed within a generation")
        tensors = list(weights.values())
        for idx in buckets(manifest, self.spec.bucket_mb):
            flat = torch.cat([tensors[j].detach().reshape(-1).to(self.device) for j in idx])
            self._broadcast(flat)
        self.sent += 1
        return len(tensors)

    def receive(self, to_host: bool = False) -> dict[str, torch.Tensor]:
        """Ranks >= 1: the next broadcast, as name -> tensor (views of per-bucket buffers on this member's device).
        `to_host`: move each bucket to CPU memory as soon as it arrives, so a GPU member holds one bucket at a time
        beside its engine's own weights rather than a second copy of the model (what rollout workers do under
        NCCL: an engine such as vLLM has already claimed most of the GPU)."""
        if self.manifest is None:
            self.manifest = pickle.loads(self.store.get("manifest"))
        out: dict[str, torch.Tensor] = {}
        for idx in buckets(self.manifest, self.spec.bucket_mb):
            dt = getattr(torch, self.manifest[idx[0]][2])
            sizes = [torch.Size(self.manifest[j][1]).numel() for j in idx]
            flat = torch.empty(sum(sizes), dtype=dt, device=self.device)
            self._broadcast(flat)
            if to_host and flat.device.type != "cpu":
                flat = flat.cpu()
            for j, part in zip(idx, flat.split(sizes)):
                name, shape, _ = self.manifest[j]
                out[name] = part.view(shape)
        self.sent += 1
        return out

    @classmethod
    def rejoin(cls, old: BroadcastGroup | None, spec: GroupSpec, rank: int, device=None) -> BroadcastGroup:
        """Leave `old` (if any) and join `spec`'s generation: what every member does when the group is rebuilt."""
        if old is not None:
            old.close()
        return cls(spec, rank, device)

    def close(self) -> None:
        pg, self.pg = self.pg, None
        if pg is not None and self.spec.backend == "nccl":
            try:
                pg.abort()
            except Exception:  # already aborted by the watchdog, or never initialised
                pass

