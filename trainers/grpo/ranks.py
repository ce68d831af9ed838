"""The GRPO trainer: one data-parallel rank (`TrainerRank`), and the groups that drive 1 or N of them.

A rank owns the policy (model, optimizer, scheduler, optional frozen reference) and runs the update on its shard of
every batch. The controller process (`trainers/grpo/trainer.py`) never touches the model: it calls one of

- `InProcessTrainer`: one rank in the controller's own process (`cluster.trainer_ranks=1`, the default);
- `RayTrainerGroup`: `cluster.trainer_ranks` ranks as Ray actors joined in one torch.distributed process group
  (gloo on CPU, NCCL on GPU), each reserving `cluster.cpus_per_trainer` CPUs / `cluster.gpus_per_trainer` GPUs.

The same rank code runs in both. `cluster.trainer_strategy` picks how ranks share the model:
- `ddp`: every rank holds the whole model (torch DistributedDataParallel) and gradients are all-reduced;
- `fsdp2`: parameters, gradients and optimizer state are sharded across ranks (torch FSDP2 `fully_shard`, one
  unit per decoder layer plus the root), for models that do not fit one device. Full fine-tuning only.

Exactness: the controller splits the batch into equal-length shards (padding the last ones with rows whose response
mask is zero) and every rank weights its micro-batch losses by their share of the *global* batch, times the world
size (both DDP and FSDP2 average gradients over ranks). The summed gradient is then exactly the single-rank
full-batch gradient; `tests/trainers/grpo/test_ranks.py` checks 2 ranks against 1 after real optimizer steps.
Every rank runs the same number of forward passes (equal shard lengths), which FSDP2's collective forward needs.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rollout.logprobs import policy_logprobs
from rollout.types import RolloutBatch, Sample
from trainers.grpo.batch import collate
from trainers.grpo.config import GRPOConfig
from trainers.grpo.loss import LossConfig, LossInputs, policy_loss

log = logging.getLogger("orchard")


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def loss_config(cfg: GRPOConfig) -> LossConfig:
    t, r = cfg.trainer, cfg.rollout
    offpolicy = t.offpolicy or ("decoupled" if cfg.max_staleness > 0 else "none")
    return LossConfig(clip_low=t.clip_low, clip_high=t.clip_high, dual_clip_c=t.dual_clip_c, agg=t.loss_agg,
                      max_len=r.max_new_tokens, kl_coef=t.kl_coef, offpolicy=offpolicy, is_cap=t.is_cap)


# --- the policy --------------------------------------------------------------------------------------------------
@dataclass
class Policy:
    """The trainable model (optionally a peft LoRA wrapper), its tokenizer, optimizer and frozen reference.

    `model` is the plain module (state dicts, LoRA merging, evaluation); `fwd` is what the loss runs forward and
    backward through: `model` itself on one rank or under FSDP2 (which shards the module in place), the DDP
    wrapper under DDP."""

    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ref: torch.nn.Module | None
    lora: bool
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fwd: torch.nn.Module | None = None
    strategy: str = "single"  # single | ddp | fsdp2

    def __post_init__(self):
        if self.fwd is None:
            self.fwd = self.model

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """Full HF parameter names -> tensors (LoRA merged in), as rollout engines expect. Under FSDP2 this is a
        collective (every rank must call it); rank 0 gets the full tensors on CPU, the others an empty dict."""
        if self.strategy == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return {k: v.detach() for k, v in sd.items()}
        if not self.lora:
            return {k: v.detach() for k, v in self.model.state_dict().items()}
        self.model.merge_adapter()
        try:
            sd = {}
            for k, v in self.model.state_dict().items():
                if "lora_" in k:
                    continue
                sd[k.replace("base_model.model.", "", 1).replace(".base_layer", "")] = v.detach().clone()
            return sd
        finally:
            self.model.unmerge_adapter()


def _fsdp2_shard(model: torch.nn.Module, device: torch.device, world: int) -> None:
    """FSDP2: one unit per transformer block (the model's `_no_split_modules`), then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for m in model.modules():
        if type(m).__name__ in blocks:
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def build_policy(cfg: GRPOConfig, model_dir: Path, device: torch.device | None = None, strategy: str = "single",
                 world: int = 1, weights: dict[str, torch.Tensor] | None = None) -> Policy:
    """The model (with `weights` loaded over the pretrained ones when resuming), wrapped for `strategy`, and an
    optimizer over its (possibly sharded) parameters."""
    from transformers import AutoModelForCausalLM

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(model_dir)
    dtype = torch_dtype(cfg.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    ref = None
    if cfg.trainer.kl_coef > 0 and not cfg.model.lora.enabled:
        ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval().requires_grad_(False)
    if cfg.model.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lc = cfg.model.lora
        model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                 target_modules=lc.target_modules, task_type="CAUSAL_LM"))
    if weights is not None:
        load_weights(model, weights, cfg.model.lora.enabled, source="checkpoint")
    model.train()
    fwd = model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        fwd = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
    elif strategy == "fsdp2":
        _fsdp2_shard(model, device, world)
        if ref is not None:
            _fsdp2_shard(ref, device, world)
    t = cfg.trainer
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr, betas=t.betas,
                            weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (t.warmup_steps + 1)))
    return Policy(model, tok, opt, sched, ref, cfg.model.lora.enabled, device, fwd, strategy)


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], lora: bool, source: str) -> None:
    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
        return
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # lm_head may be tied to the embedding
        raise RuntimeError(f"{source} does not match the model: missing={missing[:5]} unexpected={unexpected[:5]}")


def read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(f))
    return weights


def ref_logprobs(policy: Policy, batch: RolloutBatch, temperature: float) -> torch.Tensor | None:
    if policy.ref is not None:
        with torch.no_grad():
            return policy_logprobs(policy.ref, batch.input_ids, batch.attention_mask, batch.prompt_len, temperature)
    if policy.lora:  # the reference is the base model: the same weights with adapters switched off
        with torch.no_grad(), policy.model.disable_adapter():
            return policy_logprobs(policy.model, batch.input_ids, batch.attention_mask, batch.prompt_len, temperature)
    return None


def _micro(batch: RolloutBatch, size: int):
    for start in range(0, len(batch), size):
        yield batch.select(slice(start, start + size))


# --- the update --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """This rank's rows of a step's batch: the first `n_real` are real, the rest padding (response mask 0).
    `batch_size` and `total_tokens` are the global batch's (real rows, response tokens), which every loss is
    weighted against; `world` is the number of ranks whose gradients get averaged."""

    batch: RolloutBatch
    n_real: int
    batch_size: int
    total_tokens: float
    world: int = 1


def whole(batch: RolloutBatch) -> Shard:
    return Shard(batch, len(batch), len(batch), float(batch.response_mask.sum().clamp(min=1)), 1)


def shard(batch: RolloutBatch, world: int) -> list[Shard]:
    """`world` contiguous shards of equal length ceil(B / world); short ones are padded with a copy of row 0 whose
    response mask is zero (it adds nothing to the loss or the gradient)."""
    B = len(batch)
    per = -(-B // world)
    total = float(batch.response_mask.sum().clamp(min=1))
    out = []
    for r in range(world):
        rows = list(range(r * per, min(B, (r + 1) * per)))
        n_real = len(rows)
        idx = torch.tensor(rows + [0] * (per - n_real), dtype=torch.long)
        part = batch.select(idx)
        if n_real < per:
            part.response_mask = part.response_mask.clone()
            part.response_mask[n_real:] = 0.0
            part.advantages = part.advantages.clone()
            part.advantages[n_real:] = 0.0
        out.append(Shard(part, n_real, B, total, world))
    return out


def update(policy: Policy, sh: Shard, cfg: GRPOConfig, loss_cfg: LossConfig, recompute: bool = False) -> dict:
    """`ppo_epochs` optimizer steps over this rank's shard, accumulating gradients over micro-batches so that the
    result equals one full-batch step (each micro-batch's loss is weighted by its share of the global batch).
    Metrics are this rank's share of the global averages: the controller sums them over ranks."""
    t, T = cfg.trainer, max(cfg.rollout.temperature, 1e-6)
    batch, dev = sh.batch, policy.device
    params = [p for p in policy.model.parameters() if p.requires_grad]
    # The "old" (proximal) policy of the clipped ratio is the policy before this update. With one epoch the
    # parameters do not change until the single optimizer step, so its log-probs are exactly the current ones,
    # detached: no extra forward pass. With more epochs they are recomputed once, up front.
    prox_is_current = (recompute or t.recompute_old_logprobs) and t.ppo_epochs == 1
    with torch.no_grad():
        old = batch.behav_logprobs
        if t.ppo_epochs > 1:
            policy.model.eval()
            old = torch.cat([policy_logprobs(policy.model, mb.input_ids.to(dev), mb.attention_mask.to(dev),
                                             mb.prompt_len, T).float().cpu()
                             for mb in _micro(batch, t.micro_batch_size)])  # [b, L]
            policy.model.train()
        ref = None
        if t.kl_coef > 0:
            ref = torch.cat([ref_logprobs(policy, mb, T).float().cpu() for mb in _micro(batch, t.micro_batch_size)])
    starts = list(range(0, len(batch), t.micro_batch_size))
    metrics: dict[str, float] = {}
    for _ in range(t.ppo_epochs):
        policy.optimizer.zero_grad(set_to_none=True)
        for j, start in enumerate(starts):
            idx = slice(start, min(len(batch), start + t.micro_batch_size))
            mb = batch.select(idx)
            real_rows = max(0, min(sh.n_real, idx.stop) - start)
            with _grad_sync(policy, last=j == len(starts) - 1):
                lp = policy_logprobs(policy.fwd, mb.input_ids.to(dev), mb.attention_mask.to(dev), mb.prompt_len, T)
                old_mb = lp.detach().float() if prox_is_current else old[idx].to(dev)
                inputs = LossInputs(logprobs=lp.float(), old_logprobs=old_mb, behav_logprobs=mb.behav_logprobs.to(dev),
                                    advantages=mb.advantages.to(dev), response_mask=mb.response_mask.to(dev),
                                    ref_logprobs=None if ref is None else ref[idx].to(dev))
                loss, m = policy_loss(inputs, loss_cfg, name=t.loss)
                if t.loss_agg == "token_mean":
                    share = float(mb.response_mask.sum()) / sh.total_tokens
                    m_share = share
                else:  # padded rows count in the micro-batch mean (as zeros) but not in the global batch size
                    share, m_share = len(mb) / sh.batch_size, real_rows / sh.batch_size
                (loss * (share * sh.world)).backward()  # DDP and FSDP2 average gradients over the world
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) * m_share
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        policy.optimizer.step()
        policy.scheduler.step()
    metrics = {k: v / t.ppo_epochs for k, v in metrics.items()}
    metrics["actor/grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    metrics["actor/lr"] = policy.scheduler.get_last_lr()[0]
    return metrics


def _grad_sync(policy: Policy, last: bool):
    """Gradient communication only on the last micro-batch of a step (DDP `no_sync`, FSDP2
    `set_requires_gradient_sync`); nothing to do on one rank."""
    if policy.strategy == "fsdp2":
        policy.model.set_requires_gradient_sync(last)
    if policy.strategy == "ddp" and not last:
        return policy.fwd.no_sync()
    return contextlib.nullcontext()


@torch.no_grad()
def probe_logprobs(policy: Policy, probe: list[Sample]) -> list[list[float]]:
    """The trainer's T=1 log-probs of the weight-sync probe's completions (what every worker must reproduce)."""
    z = torch.zeros(len(probe))
    b = collate(probe, z, z, z.long(), policy.tokenizer.pad_token_id)
    was_training = policy.model.training
    policy.model.eval()
    lp = policy_logprobs(policy.model, b.input_ids.to(policy.device), b.attention_mask.to(policy.device), b.prompt_len, 1.0)
    policy.model.train(was_training)
    return [lp[i, :len(s.completion_ids)].float().cpu().tolist() for i, s in enumerate(probe)]


# --- one rank ----------------------------------------------------------------------------------------------------
OPTIM_FILE = "optimizer.pt"


class TrainerRank:
    """One data-parallel rank. In process (world 1) or as a Ray actor; `setup` joins the process group."""

    def __init__(self, cfg: dict, model_dir: str, rank: int = 0, world: int = 1, strategy: str = "ddp",
                 threads: int | None = None, pin_core: int | None = None):
        from rl.cluster import place

        place(pin_core, threads)
        self.cfg = GRPOConfig.model_validate(cfg) if isinstance(cfg, dict) else cfg
        self.model_dir, self.rank, self.world = Path(model_dir), rank, world
        self.strategy = strategy if world > 1 else "single"
        self.loss_cfg = loss_config(self.cfg)
        self.policy: Policy | None = None
        self._sync = None  # rank 0, broadcast weight sync: its rl.weight_sync.BroadcastGroup

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
        self.policy = build_policy(self.cfg, self.model_dir, device, self.strategy, self.world, weights)
        if ckpt:
            self._load_optimizer(Path(ckpt))
        return {"rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(), "device": str(device),
                "strategy": self.strategy, "threads": torch.get_num_threads()}

    def update(self, sh: Shard, recompute: bool) -> dict:
        return update(self.policy, sh, self.cfg, self.loss_cfg, recompute)

    def weights(self, as_ref: bool = False):
        """The merged full weights on rank 0 (None elsewhere). `as_ref`: put them in Ray's object store here and
        return [ref, n_tensors] (a list, so Ray does not resolve the ref on the way back)."""
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
        from rl.weight_sync import BroadcastGroup

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
        p, d = self.policy, Path(d)
        if p.strategy == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            msd, osd = get_state_dict(p.model, p.optimizer,
                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.rank == 0:
                p.model.save_pretrained(d / "model", state_dict=msd, safe_serialization=True)
        else:
            osd = p.optimizer.state_dict()
            if self.rank == 0:
                p.model.save_pretrained(d / "model", safe_serialization=True)
        if self.rank == 0:
            p.tokenizer.save_pretrained(d / "model")
            torch.save({"optimizer": osd, "scheduler": p.scheduler.state_dict(), "strategy": p.strategy,
                        "world": self.world}, d / OPTIM_FILE)

    def _load_optimizer(self, ckpt: Path) -> None:
        p = self.policy
        f = ckpt / OPTIM_FILE
        # checkpoints written before trainer ranks kept the optimizer in trainer_state.pt
        state = torch.load(f if f.exists() else ckpt / "trainer_state.pt", weights_only=False, map_location="cpu")
        if (state.get("strategy") == "fsdp2") != (p.strategy == "fsdp2"):
            raise RuntimeError(f"checkpoint {ckpt} holds {state.get('strategy', 'single')} optimizer state; this run "
                               f"uses cluster.trainer_strategy={p.strategy} (resume with the strategy it was saved with)")
        if p.strategy == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(p.model, p.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            p.optimizer.load_state_dict(state["optimizer"])
        p.scheduler.load_state_dict(state["scheduler"])

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

    def update(self, batch: RolloutBatch, recompute: bool) -> dict:
        return self.rank.update(whole(batch), recompute)

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

    def update(self, batch: RolloutBatch, recompute: bool) -> dict:
        import ray

        outs = ray.get([a.update.remote(s, recompute) for a, s in zip(self.actors, shard(batch, self.ranks))])
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
