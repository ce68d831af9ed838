"""GRPO job config: typed defaults with a docstring per field. Recipes in `configs/` override these."""
from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rewards import RewardSpec
from rl.cluster import ClusterConfig, resolve_backend
from rl.config import JobConfig, Section
from rl.registry import did_you_mean, registered_name
from rollout.diffusion_engine import DecodingOptions
from rollout.ensemble_engine import EnsembleOptions
from rollout.hf_engine import HFOptions
from rollout.logprobs import ESTIMATORS
from rollout.runners import RUNNERS
from rollout.vllm_engine import VLLMOptions
from trainers.advantages import ADVANTAGES
from trainers.offpolicy import OffPolicyConfig

log = logging.getLogger("orchard")


class LoraConfig(Section):
    enabled: bool = False
    """Train a LoRA adapter (peft) instead of all weights."""
    r: int = Field(8, ge=1, le=1024)
    """LoRA rank."""
    alpha: float = Field(16.0, gt=0)
    """LoRA alpha (scaling = alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """LoRA dropout."""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    """Module names that get adapters."""


class ModelConfig(Section):
    path: str = "tiny-arith"
    """A zoo model name (built and cached on first use; see `rl models list`) or a local Hugging Face model directory."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype for the trainer and the rollout engine."""
    estimator: str = "causal"
    """Log-prob estimator (registered in `rollout.logprobs.ESTIMATORS`): how the trainer loads this kind of model
    (its transformers class, its peft task type) and scores completion tokens. `causal`: left-to-right causal LMs."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapters via peft."""

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, v: str) -> str:
        return registered_name(ESTIMATORS, v)


class DataConfig(Section):
    name: str | dict[str, str] = "arithmetic"
    """A registered prompt dataset (`arithmetic`, `arithmetic_chat`, `make_number`), a dataset file (.jsonl, .json,
    .csv, .parquet; `<stem>.<split>.<ext>` files beside it are further splits), a `datasets` save_to_disk directory,
    or a mapping of split names to files (`{train: train.parquet, test: test.parquet}`)."""
    train_size: int = Field(4096, ge=1)
    """Number of training prompts (cycled through in a seeded order, one epoch after another)."""
    eval_size: int = Field(300, ge=1)
    """Number of held-out prompts for evaluation (the same fixed set for every seed: the test split, disjoint from training)."""
    test_split: str | float = "test"
    """The held-out split evaluation reads: a split name, or a fraction in (0, 1) of a dataset file's train split
    held out with a fixed seed (for data without a test split; training then never sees those rows)."""
    prompt_key: str = "prompt"
    """Column holding the prompt: a string, or a list of {role, content} messages (TRL's conversational format)."""
    answer_key: str = "answer"
    """Column holding the reference answer (dataset files); passed to rewards as `answer`."""
    format: Literal["auto", "text", "chat"] = "auto"
    """How prompts become tokens (`envs.prompting.PROMPT_FORMATS`): `chat` renders them with the tokenizer's chat
    template and an open assistant turn (a string prompt is one user message); `text` tokenizes the prompt string
    as it is; `auto`: chat if the tokenizer has a chat template, else text."""
    system_prompt: str | None = None
    """A system message put before every conversation (chat format only; rows that start with their own system
    message keep it)."""

    @field_validator("test_split")
    @classmethod
    def _split_or_fraction(cls, v):
        if isinstance(v, float) and not 0 < v < 1:
            raise ValueError(f"a held-out fraction must lie in (0, 1), got {v}")
        return v


class RolloutConfig(Section):
    engine: Literal["hf", "vllm", "btm_ensemble", "diffusion"] = "hf"
    """Generation engine (`rollout.engine.ENGINES`). `hf` (transformers) is faster on the tiny CPU models (see `rl bench rollout`); use `vllm` for real models."""
    runner: str | None = None
    """How a rollout worker turns a task into trajectories (`rollout.runners.RUNNERS`): single_turn, chunked.
    Unset: `chunked` when `partial_chunk_tokens` is set, else `single_turn`."""
    num_generations: int = Field(8, ge=1)
    """G: completions sampled per prompt (the GRPO group)."""
    prompts_per_step: int = Field(16, ge=1)
    """Prompts per training step; the batch is prompts_per_step x num_generations samples."""
    max_new_tokens: int = Field(16, ge=1)
    """Longest completion."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature for training rollouts (behaviour log-probs are post-temperature)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling; keep 1.0 unless you accept the biased log-probs it implies."""
    prompts_per_task: int | None = Field(None, ge=1)
    """Prompts per rollout-worker call (each with its G samples). None: prompts_per_step / cluster.rollout_workers,
    rounded up. Smaller tasks let fresh weights reach generation sooner and spread work across workers."""
    partial_chunk_tokens: int | None = Field(None, ge=1)
    """Partial rollouts (the `chunked` runner): workers generate each task in chunks of this many new tokens and load
    the newest weights they have received between chunks, so one sample's later tokens may come from a newer policy
    version than its first ones (each token carries its version and the log-prob of the weights that sampled it;
    `rollout/mixed_version_frac` counts such samples). Needs Ray workers for weights to arrive mid-task (the local
    backend only chunks). None: each task is generated to the end with one version."""
    lora_sync: Literal["auto", "merged", "adapter"] = "auto"
    """With model.lora.enabled, what the weight sync ships: `adapter` (only the LoRA tensors; every engine serves its
    base weights plus the adapter: vLLM's LoRARequest, peft on HF), or `merged` (full weights with the adapter merged
    in). auto: adapter on the vllm engine, merged on hf. Without LoRA: merged. Resolved when the config loads."""
    hf: HFOptions = HFOptions()
    """`hf` engine options."""
    vllm: VLLMOptions = VLLMOptions()
    """`vllm` engine options."""
    btm_ensemble: EnsembleOptions = EnsembleOptions()
    """`btm_ensemble` engine options (BTM's expert ensemble; model.path is an ensemble directory)."""
    decoding: DecodingOptions = DecodingOptions()
    """`diffusion` engine options (masked-diffusion LMs: schedule, steps, blocks, remasking, EOSER, accelerators)."""

    @model_validator(mode="before")
    @classmethod
    def _moved_max_batch(cls, v):
        """`rollout.max_batch` (before the engines had option sections) means both engines' `max_batch`, so a run
        recorded with it still resumes."""
        if isinstance(v, dict) and "max_batch" in v:
            v = dict(v)
            n = v.pop("max_batch")
            for engine in ("hf", "vllm"):
                opts = dict(v.get(engine) or {})
                opts.setdefault("max_batch", n)
                v[engine] = opts
            log.warning("rollout.max_batch is now rollout.hf.max_batch / rollout.vllm.max_batch; applied to both")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_runner(cls, v):
        """Resolve an unset `runner` from `partial_chunk_tokens`, so the recorded config names the runner that ran."""
        if isinstance(v, dict) and v.get("runner") is None:
            v = {**v, "runner": "chunked" if v.get("partial_chunk_tokens") else "single_turn"}
        return v

    @field_validator("runner")
    @classmethod
    def _known_runner(cls, v):
        if v not in RUNNERS:
            raise ValueError(f"unknown rollout runner '{v}'{did_you_mean(v, RUNNERS.names())}; known: "
                             f"{', '.join(RUNNERS.names())}")
        return v

    @model_validator(mode="after")
    def _runner_options(self):
        if self.partial_chunk_tokens and self.runner == "single_turn":
            raise ValueError("rollout.partial_chunk_tokens is set but rollout.runner=single_turn generates whole "
                             "tasks (use rollout.runner=chunked, or unset partial_chunk_tokens)")
        RUNNERS.get(self.runner).from_config(self)  # the runner's own checks of its options
        return self

    @property
    def engine_options(self) -> Section:
        """The options section of the selected engine (`rollout.<engine>`)."""
        return getattr(self, "decoding" if self.engine == "diffusion" else self.engine)


class TrainerConfig(OffPolicyConfig):
    """Optimisation and loss; the off-policy correction's knobs (`offpolicy`, `is_cap`, ...) come from
    `trainers.offpolicy.OffPolicyConfig`."""

    lr: float = Field(2e-4, gt=0)
    """AdamW learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    warmup_steps: int = Field(0, ge=0)
    """Linear learning-rate warm-up steps."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    advantage: str = "grpo"
    """Advantage estimator (registered in `trainers.advantages`): grpo, dr_grpo, rloo, reinforce."""
    loss: str = "ppo_clip"
    """Policy loss (registered in `trainers.grpo.loss`)."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "seq_mean_token_mean"
    """Loss aggregation: GRPO seq_mean_token_mean, DAPO token_mean, Dr. GRPO seq_mean_token_sum_norm (each
    sequence's token sum divided by the constant rollout.max_new_tokens)."""
    clip_low: float = Field(0.2, ge=0, lt=1)
    """PPO ratio clip below 1 (epsilon_low): the ratio is clipped below at 1 - clip_low."""
    clip_high: float = Field(0.2, ge=0)
    """PPO ratio clip above 1 (epsilon_high): clipped above at 1 + clip_high (DAPO clip-higher uses 0.28)."""
    dual_clip_c: float | None = Field(None, gt=1)
    """Dual clip (Ye et al. 2020; verl `clip_ratio_c`, 3.0): for A < 0 the per-token loss is capped at -c A.
    None disables it."""
    kl_coef: float = Field(0.0, ge=0)
    """beta of the k3 KL penalty to the reference (initial) model (GRPO 0.04; DAPO and Dr. GRPO 0); 0 disables it
    and loads no reference."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes (mu) over each rollout batch."""
    micro_batch_size: int = Field(64, ge=1)
    """Samples per forward/backward; gradients accumulate over the whole batch for one optimizer step per epoch."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal and generate more until the batch is full."""
    max_resample_rounds: int = Field(3, ge=0)
    """Extra generation rounds allowed per step when dynamic sampling removed groups."""
    sync_check_every: int = Field(1, ge=0)
    """Verify the weight sync every N steps: a fixed probe batch is scored by the trainer and the engine, and a
    log-prob mismatch above `sync_check_tol` stops the job (0 disables)."""
    sync_check_tol: float = Field(1e-4, gt=0)
    """Largest allowed |trainer - engine| log-prob difference on the probe batch (raise it for bf16/fp16)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them (HF's `gradient_checkpointing_enable` on the
    policy, non-reentrant; with LoRA on the base model under the adapter): less memory, more compute per step."""
    recompute_old_logprobs: bool = False
    """Take the old-policy log-probs of the clipped ratio from the trainer rather than the engine (needed if engine
    and trainer differ numerically). Implied by ppo_epochs > 1 and by max_staleness > 0; see `GRPOConfig.old_logprobs`.
    Otherwise the engine's behaviour log-probs are the old log-probs."""

    @field_validator("advantage")
    @classmethod
    def _known_advantage(cls, v: str) -> str:
        return registered_name(ADVANTAGES, v)


class EvalConfig(Section):
    every: int = Field(0, ge=0)
    """Evaluate held-out accuracy every N steps (0: only before and after training)."""
    max_new_tokens: int = Field(16, ge=1)
    """Longest completion at evaluation (greedy decoding)."""
    reward: str = "exact_match"
    """Reward used as the held-out accuracy metric (a sample counts as correct when it scores > 0.5)."""


class GRPOConfig(JobConfig):
    algo: Literal["grpo"] = "grpo"
    """Which job to run."""
    max_steps: int = Field(100, ge=1)
    """Training steps (one rollout batch and `ppo_epochs` optimizer steps each)."""
    max_staleness: int = Field(0, ge=0)
    """How many policy versions generation may run ahead of training (0: synchronous on-policy). Generation is
    paced, never dropped: a sample made by policy version v is trained on by step v + max_staleness + 1 at the
    latest. Above 0 the proximal (old) policy of the clipped ratio is the trainer's own (with one epoch: the current
    log-probs, detached; with more: recomputed once per step), and `trainer.offpolicy` corrects for the gap between
    it and the behaviour policy that generated the samples (default: decoupled PPO)."""
    cluster: ClusterConfig = ClusterConfig()
    """Where rollout workers run (Ray actors or in process) and how many."""
    model: ModelConfig = ModelConfig()
    """Policy model."""
    data: DataConfig = DataConfig()
    """Prompt dataset."""
    rollout: RolloutConfig = RolloutConfig()
    """Generation."""
    reward: list[RewardSpec] = [RewardSpec(fn="exact_match")]
    """Reward functions: a name/ref string, or a list of {fn, weight, kwargs}."""
    reward_timeout_s: float = Field(30.0, gt=0)
    """A reward call taking longer than this stops the job with an error naming the function."""
    on_reward_error: Literal["raise", "drop"] = "raise"
    """What a failing reward does: stop the job (raise) or drop the sample and count it in `reward/dropped`."""
    reward_none_patience: int = Field(3, ge=0)
    """Stop the job after this many consecutive steps in which no sample got a number from any reward function
    (every function returned None: no learning signal). Each such step logs a warning and `reward/all_none_frac`
    1.0. 0: never stop."""
    trainer: TrainerConfig = TrainerConfig()
    """Optimisation and loss."""
    eval: EvalConfig = EvalConfig()
    """Held-out evaluation."""

    @field_validator("reward", mode="before")
    @classmethod
    def _reward_shorthand(cls, v):
        """Accept `reward=file.py:fn`, a list of strings, or a list of {fn, weight, kwargs} mappings."""
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            return [{"fn": x} if isinstance(x, str) else x for x in v]
        return v

    @model_validator(mode="after")
    def _resolve_backend(self):
        resolve_backend(self.cluster, overlap=self.max_staleness > 0, engine=self.rollout.engine)
        return self

    @model_validator(mode="after")
    def _resolve_offpolicy(self):
        """`trainer.offpolicy` unset or null: decoupled PPO if generation runs ahead (max_staleness > 0), else none."""
        self.trainer.resolve_offpolicy(self.max_staleness)
        return self

    @property
    def old_logprobs(self) -> Literal["behav", "current", "recompute"]:
        """Where the update takes the old (proximal) log-probs of the clipped ratio from, decided here only:
        - `recompute`: ppo_epochs > 1, so the policy moves between epochs: the trainer's log-probs of the policy
          before the update, computed once up front;
        - `current`: one epoch with trainer.recompute_old_logprobs or max_staleness > 0: the parameters do not
          change before the single optimizer step, so the old log-probs are exactly the current ones, detached (no
          extra forward pass);
        - `behav`: otherwise, the engine's behaviour log-probs (on-policy: the same policy)."""
        if self.trainer.ppo_epochs > 1:
            return "recompute"
        if self.trainer.recompute_old_logprobs or self.max_staleness > 0 or not getattr(
                ESTIMATORS.get(self.model.estimator), "behav_comparable", True):
            return "current"
        return "behav"

    @model_validator(mode="after")
    def _resolve_lora_sync(self):
        """`rollout.lora_sync` auto -> adapter for LoRA on vLLM, else merged; adapter needs LoRA and the object store."""
        r = self.rollout
        if r.lora_sync == "auto":
            r.lora_sync = "adapter" if self.model.lora.enabled and r.engine == "vllm" else "merged"
        if r.lora_sync == "adapter" and not self.model.lora.enabled:
            raise ValueError("rollout.lora_sync=adapter needs model.lora.enabled=true (there is no adapter to ship)")
        if r.lora_sync == "adapter" and self.cluster.weight_sync == "broadcast":
            raise ValueError("rollout.lora_sync=adapter ships through the object store; cluster.weight_sync=broadcast "
                             "sends merged weights (use rollout.lora_sync=merged, or cluster.weight_sync=object_store)")
        return self

    @model_validator(mode="after")
    def _check_strategy(self):
        c = self.cluster
        if c.trainer_ranks > 1 and c.trainer_strategy == "fsdp2" and self.model.lora.enabled:
            raise ValueError("cluster.trainer_strategy=fsdp2 with model.lora.enabled=true: FSDP2 here shards full "
                             "fine-tuning only (a LoRA adapter is small: use cluster.trainer_strategy=ddp)")
        return self

