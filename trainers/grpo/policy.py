"""The trainable policy of one trainer rank: building it (model via the config's log-prob estimator, LoRA, the
data-parallel strategy, optimizer, frozen reference), its merged weights for the rollout engines, checkpoint I/O,
and the tokenizer and weight files of a model directory."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from rollout.logprobs import ESTIMATORS
from trainers.grpo.config import GRPOConfig
from trainers.strategy import Single, Strategy, optimizer_format_of

OPTIM_FILE = "optimizer.pt"


class Estimator(Protocol):
    """What the trainer uses of a log-prob estimator registered in `rollout.logprobs.ESTIMATORS`."""

    peft_task_type: str
    """peft `TaskType` of LoRA adapters on this kind of model."""

    def load_model(self, path, dtype: str = "float32") -> torch.nn.Module:
        """The model in directory `path`, its weights in `dtype`."""

    def logprobs(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                 temperature: float) -> torch.Tensor:
        """[B, L] differentiable log pi(completion token) for prompts left-padded to `prompt_len`."""


@dataclass
class Policy:
    """The trainable model (optionally a peft LoRA wrapper), its tokenizer, optimizer and frozen reference.

    `model` is the plain module (state dicts, LoRA merging, evaluation); `fwd` is what the loss runs forward and
    backward through (`strategy.wrap`'s result: the DDP wrapper under DDP, `model` itself otherwise). `estimator`
    (`rollout.logprobs.ESTIMATORS[model.estimator]`) scores tokens for the update, the reference and the probe."""

    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ref: torch.nn.Module | None
    lora: bool
    estimator: Estimator
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fwd: torch.nn.Module | None = None
    strategy: Strategy = field(default_factory=Single)

    def __post_init__(self):
        if self.fwd is None:
            self.fwd = self.model

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """Full HF parameter names -> tensors (LoRA merged in), as rollout engines expect. Under FSDP2 this is a
        collective (every rank must call it); rank 0 gets the full tensors on CPU, the others an empty dict."""
        if not self.lora:
            return {k: v.detach() for k, v in self.strategy.model_state_dict(self.model).items()}
        self.model.merge_adapter()  # LoRA never runs under FSDP2 (GRPOConfig refuses it)
        try:
            sd = {}
            for k, v in self.model.state_dict().items():
                if "lora_" in k:
                    continue
                sd[k.replace("base_model.model.", "", 1).replace(".base_layer", "")] = v.detach().clone()
            return sd
        finally:
            self.model.unmerge_adapter()

    def save(self, d: Path, write: bool, world: int) -> None:
        """Model (+ tokenizer) under `d/model` and optimizer + scheduler in `d/optimizer.pt`, written if `write`
        (rank 0; every rank must call it under FSDP2)."""
        osd = self.strategy.save(self.model, self.optimizer, d / "model", write)
        if write:
            self.tokenizer.save_pretrained(d / "model")
            torch.save({"optimizer": osd, "scheduler": self.scheduler.state_dict(), "strategy": self.strategy.name,
                        "world": world}, d / OPTIM_FILE)

    def load_optimizer(self, ckpt: Path) -> None:
        """Optimizer and scheduler state from checkpoint `ckpt`, which must have been written under a strategy with
        the same optimizer-state format."""
        f = ckpt / OPTIM_FILE
        # checkpoints written before trainer ranks kept the optimizer in trainer_state.pt
        state = torch.load(f if f.exists() else ckpt / "trainer_state.pt", weights_only=False, map_location="cpu")
        saved = state.get("strategy", "single")
        if optimizer_format_of(saved) != self.strategy.optimizer_format:
            raise RuntimeError(f"checkpoint {ckpt} holds {saved} optimizer state; this run uses "
                               f"cluster.trainer_strategy={self.strategy.name} (resume with the strategy it was "
                               f"saved with)")
        self.strategy.load_optimizer(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def load_tokenizer(model_dir: Path):
    """The model directory's tokenizer, left-padding (prompts are left-padded), pad token = eos if it has none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def build_policy(cfg: GRPOConfig, model_dir: Path, device: torch.device | None = None,
                 strategy: Strategy | None = None, weights: dict[str, torch.Tensor] | None = None) -> Policy:
    """The model of `cfg.model.estimator` (with `weights` loaded over the pretrained ones when resuming), wrapped
    by `strategy` (default `Single`), and an optimizer over its (possibly sharded) parameters."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    strategy = strategy or Single()
    estimator = ESTIMATORS.get(cfg.model.estimator)
    tok = load_tokenizer(model_dir)
    model = estimator.load_model(model_dir, cfg.model.dtype).to(device)
    if cfg.trainer.gradient_checkpointing:  # before peft wraps it: the adapter layers sit inside checkpointed blocks
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref = None
    if cfg.trainer.kl_coef > 0 and not cfg.model.lora.enabled:
        ref = estimator.load_model(model_dir, cfg.model.dtype).to(device).eval().requires_grad_(False)
    if cfg.model.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lc = cfg.model.lora
        model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                 target_modules=lc.target_modules,
                                                 task_type=estimator.peft_task_type))
    if weights is not None:
        load_weights(model, weights, cfg.model.lora.enabled, source="checkpoint")
    model.train()
    fwd = strategy.wrap(model, ref, device)
    t = cfg.trainer
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr, betas=t.betas,
                            weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (t.warmup_steps + 1)))
    return Policy(model, tok, opt, sched, ref, cfg.model.lora.enabled, estimator, device, fwd, strategy)


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], lora: bool, source: str) -> None:
    """Load `weights` (a LoRA adapter's when `lora`) into `model`; a mismatch raises naming `source`."""
    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
        return
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # lm_head may be tied to the embedding
        raise RuntimeError(f"{source} does not match the model: missing={missing[:5]} unexpected={unexpected[:5]}")


def read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor in the directory's `*.safetensors` files."""
    from safetensors.torch import load_file

    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(f))
    return weights
