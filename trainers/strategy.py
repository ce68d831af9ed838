"""How data-parallel trainer ranks share a model: one object per strategy, chosen once per rank.

- `Single`: one rank, nothing shared;
- `DDP`: every rank holds the whole model (torch DistributedDataParallel) and gradients are all-reduced;
- `FSDP2`: parameters, gradients and optimizer state are sharded across ranks (torch FSDP2 `fully_shard`, one unit
  per transformer block plus the root), for models that do not fit one device. Full fine-tuning only.

Each implements the `Strategy` protocol. Everything that differs between them lives here, so the policy and the
update code ask the strategy instead of testing a name. Under DDP and FSDP2 both average gradients over ranks, so a
rank's loss must be scaled by the world size for the summed gradient to be the full-batch one (the update does it).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ContextManager, Protocol

import torch


class Strategy(Protocol):
    """What the policy and the update need from a data-parallel strategy."""

    name: str
    """`single`, `ddp` or `fsdp2`: recorded in checkpoints (`optimizer.pt`) and worker infos."""
    optimizer_format: str
    """How `save`'s optimizer state is keyed; a checkpoint resumes only under a strategy of the same format."""

    def wrap(self, model: torch.nn.Module, ref: torch.nn.Module | None, device: torch.device) -> torch.nn.Module:
        """Prepare `model` (and the frozen reference `ref`, if any) for training on `device`; returns the module
        the loss runs forward and backward through."""

    def grad_sync(self, fwd: torch.nn.Module, last: bool) -> ContextManager:
        """Context for one micro-batch's forward + backward: gradients are communicated only when `last`."""

    def model_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full state dict of `model` (a collective under FSDP2: every rank must call it; there rank 0 gets
        the tensors on CPU, the others an empty dict)."""

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path, write: bool) -> dict:
        """Write `model` in HF `save_pretrained` format to `directory` if `write` (rank 0), and return the
        optimizer state to checkpoint (a collective under FSDP2)."""

    def load_optimizer(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load an optimizer state that `save` returned (under a strategy with the same `optimizer_format`)."""


def _local_save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path, write: bool) -> dict:
    if write:
        model.save_pretrained(directory, safe_serialization=True)
    return optimizer.state_dict()


class Single:
    """One rank: the model as it is."""

    name = "single"
    optimizer_format = "param_ids"  # torch's own optimizer state dict

    def wrap(self, model, ref, device):
        return model

    def grad_sync(self, fwd, last):
        return contextlib.nullcontext()

    def model_state_dict(self, model):
        return model.state_dict()

    def save(self, model, optimizer, directory, write):
        return _local_save(model, optimizer, directory, write)

    def load_optimizer(self, model, optimizer, state):
        optimizer.load_state_dict(state)


class DDP(Single):
    """torch DistributedDataParallel: whole model per rank, gradients all-reduced on the last micro-batch only.
    State dicts, saving and the optimizer are as on one rank (every rank's optimizer is whole and identical: rank 0
    saves it)."""

    name = "ddp"

    def wrap(self, model, ref, device):
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)

    def grad_sync(self, fwd, last):
        return contextlib.nullcontext() if last else fwd.no_sync()


class FSDP2:
    """torch FSDP2 over `world` ranks: one `fully_shard` unit per transformer block (the model's
    `_no_split_modules`), then the root; the frozen reference is sharded the same way."""

    name = "fsdp2"
    optimizer_format = "param_names"  # torch.distributed.checkpoint's full optimizer state dict

    def __init__(self, world: int):
        self.world = world

    def _shard(self, model: torch.nn.Module, device: torch.device) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (self.world,))
        blocks = set(getattr(model, "_no_split_modules", None) or [])
        for m in model.modules():
            if type(m).__name__ in blocks:
                fully_shard(m, mesh=mesh)
        fully_shard(model, mesh=mesh)

    def wrap(self, model, ref, device):
        self._shard(model, device)
        if ref is not None:
            self._shard(ref, device)
        return model  # FSDP2 shards the module in place

    def grad_sync(self, fwd, last):
        fwd.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def model_state_dict(self, model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save(self, model, optimizer, directory, write):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        msd, osd = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if write:
            model.save_pretrained(directory, state_dict=msd, safe_serialization=True)
        return osd

    def load_optimizer(self, model, optimizer, state):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def make_strategy(name: str, world: int) -> Strategy:
    """The strategy for `world` ranks: `Single` for one, else `name` (`cluster.trainer_strategy`: ddp or fsdp2)."""
    if world == 1:
        return Single()
    if name == "ddp":
        return DDP()
    if name == "fsdp2":
        return FSDP2(world)
    raise ValueError(f"cluster.trainer_strategy: unknown strategy {name!r} (ddp or fsdp2)")


def optimizer_format_of(name: str) -> str:
    """The optimizer-state format a checkpoint written under strategy `name` holds (for the resume check)."""
    return FSDP2.optimizer_format if name == "fsdp2" else Single.optimizer_format
