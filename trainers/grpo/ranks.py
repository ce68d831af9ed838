"""The GRPO trainer's rank host: one data-parallel rank (`TrainerRank`), and the groups that drive 1 or N of them.

A rank owns the policy (`trainers/grpo/policy.py`: model, optimizer, scheduler, optional frozen reference) and runs
the update (`trainers/grpo/update.py`) on its shard of every batch. The controller process
(`trainers/grpo/trainer.py`) never touches the model: it calls one of

- `InProcessTrainer`: one rank in the controller's own process (`cluster.trainer_ranks=1`, the default), holding
  a Ray GPU lease when the cluster reserves GPUs for the trainer;
- `RayTrainerGroup`: `cluster.trainer_ranks` ranks as Ray actors joined in one torch.distributed process group
  (gloo on CPU, NCCL on GPU), each reserving `cluster.cpus_per_trainer` CPUs / `cluster.gpus_per_trainer` GPUs.

The same rank code runs in both; `cluster.trainer_strategy` picks the `trainers/strategy.py` object (DDP or FSDP2;
`Single` on one rank) through which the ranks share the model.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import torch

from rollout.adapters import AdapterWeights
from rollout.types import RolloutBatch, Sample
from trainers.grpo.config import GRPOConfig
from trainers.grpo.policy import Policy, build_policy, read_weights
from trainers.grpo.update import Shard, probe_logprobs, shard, update, whole
from trainers.strategy import make_strategy

log = logging.getLogger("orchard")


# --- one rank ----------------------------------------------------------------------------------------------------
class TrainerRank:
    """One data-parallel rank. In process (world 1) or as a Ray actor; `setup` joins the process group."""

    def __init__(self, cfg: dict, model_dir: str, rank: int = 0, world: int = 1, strategy: str = "ddp",
                 threads: int | None = None, pin_core: int | None = None):
        from rl.cluster import place

        place(pin_core, threads)
        self.cfg = GRPOConfig.model_validate(cfg) if isinstance(cfg, dict) else cfg
        self.model_dir, self.rank, self.world = Path(model_dir), rank, world
        self.strategy = make_strategy(strategy, world)
        self.policy: Policy | None = None
        self._sync = None  # rank 0, broadcast weight sync: its rollout.weight_sync.BroadcastGroup

    def address(self) -> tuple[str, int]:
        """Where this rank (rank 0) accepts the process group's rendezvous: its node's IP and a free port."""
        from rl.cluster import node_ip

        ip = node_ip()
        with socket.socket() as s:
            s.bind((ip, 0))
            return ip, s.getsockname()[1]

    def setup(self, master: tuple[str, int] | None = None, ckpt: str | None = None, gpu: int | None = None) -> dict:
        """Join the process group (world > 1), build the policy, and load `ckpt` (model + optimizer) if given.
        `gpu`: this process's CUDA index to use (the in-process trainer's Ray lease; default: the current one)."""
        from rl.seeding import seed_everything

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda" and gpu is not None:
            torch.cuda.set_device(gpu)
            device = torch.device("cuda", gpu)
        if self.world > 1:
            import torch.distributed as dist

            if device.type == "cuda":
                torch.cuda.set_device(0)  # Ray shows each rank only its own GPU(s)
            elif "GLOO_SOCKET_IFNAME" not in os.environ:
                from rl.cluster import gloo_interface, node_ip

                iface = gloo_interface(node_ip())  # gloo on the interface of this node's Ray address
                if iface:
                    os.environ["GLOO_SOCKET_IFNAME"] = iface
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    init_method=f"tcp://{master[0]}:{master[1]}", rank=self.rank, world_size=self.world)
            seed_everything(self.cfg.seed)  # identical LoRA init on every rank (DDP also broadcasts rank 0's)
        weights = read_weights(Path(ckpt) / "model") if ckpt else None
        self.policy = build_policy(self.cfg, self.model_dir, device, self.strategy, weights)
        if ckpt:
            self.policy.load_optimizer(Path(ckpt))
        return {"rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(), "device": str(device),
                "strategy": self.strategy.name, "threads": torch.get_num_threads()}

    def update(self, sh: Shard) -> dict:
        """This rank's part of one step's update (`trainers.grpo.update.update`): its share of the metrics."""
        return update(self.policy, sh, self.cfg)

    def weights(self, as_ref: bool = False):
        """The merged full weights on rank 0 (None elsewhere). `as_ref`: put them in Ray's object store here and
        return [ref, n_tensors] (a list, so Ray does not resolve the ref on the way back)."""
        if self.cfg.rollout.lora_sync == "adapter":  # only the adapter travels (rollout/adapters.py)
            sd = AdapterWeights.from_peft(self.policy.model) if self.rank == 0 else None
        else:
            sd = self.policy.merged_state_dict()
        if self.rank != 0:
            return None
        if as_ref:
            import ray

            return [ray.put(sd), len(sd)]
        return sd

    def sync_join(self, spec) -> None:
        """Rank 0: leave the previous weight-sync group and join `spec`'s generation as its sender (blocks until every
        rollout worker has joined too). Other ranks have no part in it."""
        from rollout.weight_sync import BroadcastGroup

        if self.rank != 0:
            return
        old, self._sync = self._sync, None
        self._sync = BroadcastGroup.rejoin(old, spec, 0, self.policy.device)

    def sync_broadcast(self) -> int | None:
        """Every rank (the merged state dict is a collective under FSDP2); rank 0 broadcasts it to the rollout
        workers and returns the number of tensors sent."""
        sd = self.policy.merged_state_dict()
        return self._sync.send(sd) if self.rank == 0 else None

    def probe_logprobs(self, probe: list[Sample]) -> list[list[float]] | None:
        out = probe_logprobs(self.policy, probe)  # every rank: under FSDP2 the forward pass is a collective
        return out if self.rank == 0 else None

    def save(self, d: str) -> None:
        """Model (+ tokenizer) under `d/model` and optimizer + scheduler in `d/optimizer.pt`, written by rank 0."""
        self.policy.save(Path(d), write=self.rank == 0, world=self.world)

    def close(self) -> None:
        import torch.distributed as dist

        if self._sync is not None:
            self._sync.close()
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# --- groups ------------------------------------------------------------------------------------------------------
class InProcessTrainer:
    """One rank in the controller's process."""

    ranks = 1

    def __init__(self, cfg: GRPOConfig, model_dir: Path, ckpt: Path | None = None):
        from rl.cluster import GpuLease

        c = cfg.cluster
        self.lease = GpuLease(c.gpus_per_trainer) if c.backend == "ray" and c.gpus_per_trainer > 0 else None
        gpu = self.lease.device_index() if self.lease is not None and torch.cuda.is_available() else None
        if self.lease is None and c.backend == "ray" and c.gpus_per_worker > 0 and torch.cuda.is_available():
            log.warning("trainer: on cuda:0 without a Ray reservation (cluster.gpus_per_trainer=0), so Ray may give "
                        "a rollout worker the same GPU; set cluster.gpus_per_trainer (e.g. 1, or 0.5 to share it)")
        try:
            self.rank = TrainerRank(cfg, str(model_dir))
            self.infos = [self.rank.setup(None, str(ckpt) if ckpt else None, gpu)]
        except BaseException:
            self.close_lease()
            raise
        self.device = self.rank.policy.device
        if self.lease is not None:
            self.infos[0]["ray_gpu_ids"] = self.lease.ids

    def close_lease(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def update(self, batch: RolloutBatch) -> dict:
        return self.rank.update(whole(batch))

    def weights(self) -> tuple[dict, int]:
        sd = self.rank.weights()
        return sd, len(sd)

    def sync_join(self, spec) -> None:
        self.rank.sync_join(spec)

    def sync_broadcast(self) -> int:
        return self.rank.sync_broadcast()

    def probe_logprobs(self, probe: list[Sample]) -> list[list[float]]:
        return self.rank.probe_logprobs(probe)

    def save(self, d: Path) -> None:
        self.rank.save(str(d))

    def close(self) -> None:
        self.rank.close()
        self.close_lease()


class RayTrainerGroup:
    """`cluster.trainer_ranks` TrainerRank actors in one torch.distributed process group. Every call goes to every
    rank (FSDP2 needs all of them for any forward pass or state dict); rank 0's answer is the group's."""

    def __init__(self, cfg: GRPOConfig, model_dir: Path, ckpt: Path | None = None):
        import ray

        c = cfg.cluster
        self.ranks = c.trainer_ranks
        threads = max(1, int(round(c.cpus_per_trainer)))
        actor = ray.remote(TrainerRank).options(num_cpus=c.cpus_per_trainer, num_gpus=c.gpus_per_trainer,
                                                max_restarts=0, max_concurrency=1)
        cfg_dict = cfg.model_dump(mode="json")
        self.actors = [actor.remote(cfg_dict, str(model_dir), r, self.ranks, c.trainer_strategy, threads,
                                    r if c.pin_cpus else None) for r in range(self.ranks)]
        master = ray.get(self.actors[0].address.remote())
        self.infos = self._all("setup", master, str(ckpt) if ckpt else None)
        self.device = torch.device(self.infos[0]["device"])
        log.info(f"trainer: {self.ranks} ranks ({c.trainer_strategy}, {self.infos[0]['device']}), "
                 f"rendezvous at {master[0]}:{master[1]}")

    def _all(self, method: str, *args) -> list:
        import ray

        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def update(self, batch: RolloutBatch) -> dict:
        import ray

        outs = ray.get([a.update.remote(s) for a, s in zip(self.actors, shard(batch, self.ranks))])
        metrics = {k: sum(o[k] for o in outs) for k in outs[0]}  # each rank's share of the global averages
        metrics["actor/grad_norm"], metrics["actor/lr"] = outs[0]["actor/grad_norm"], outs[0]["actor/lr"]
        return metrics

    def weights(self):
        ref, n = self._all("weights", True)[0]
        return ref, n

    def sync_join(self, spec) -> None:
        import ray

        ray.get(self.actors[0].sync_join.remote(spec))

    def sync_broadcast(self) -> int:
        return self._all("sync_broadcast")[0]

    def probe_logprobs(self, probe: list[Sample]) -> list[list[float]]:
        return self._all("probe_logprobs", probe)[0]

    def save(self, d: Path) -> None:
        self._all("save", str(d))

    def close(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.get(a.close.remote(), timeout=30)
            except Exception:  # already gone
                pass
            ray.kill(a, no_restart=True)


def make_trainer(cfg: GRPOConfig, model_dir: Path, ckpt: Path | None = None):
    """The trainer per `cfg.cluster`: in process for one rank, a Ray actor group for more."""
    if cfg.cluster.trainer_ranks == 1:
        return InProcessTrainer(cfg, model_dir, ckpt)
    return RayTrainerGroup(cfg, model_dir, ckpt)
