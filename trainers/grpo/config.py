"""GRPO job config: typed defaults with a docstring per field. Recipes in `configs/` override these."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rl.cluster import ClusterConfig
from rl.config import JobConfig, Section
from rl.registry import did_you_mean
from rollout.hf_engine import HFOptions
from rollout.runners import RUNNERS
from rollout.vllm_engine import VLLMOptions


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
    lora: LoraConfig = LoraConfig()
    """LoRA adapters via peft."""


class DataConfig(Section):
    name: str = "arithmetic"
    """A registered prompt dataset name or a path to a .jsonl file (one JSON object per line)."""
    train_size: int = Field(4096, ge=1)
    """Number of training prompts (cycled through in a seeded order, one epoch after another)."""
    eval_size: int = Field(300, ge=1)
    """Number of held-out prompts for evaluation (the same fixed set for every seed: the test split, disjoint from training)."""
    prompt_key: str = "prompt"
    """Column holding the prompt text (jsonl datasets)."""
    answer_key: str = "answer"
    """Column holding the reference answer (jsonl datasets); passed to rewards as `answer`."""


class RolloutConfig(Section):
    engine: Literal["hf", "vllm"] = "hf"
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
    hf: HFOptions = HFOptions()
    """`hf` engine options."""
    vllm: VLLMOptions = VLLMOptions()
    """`vllm` engine options."""

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
        return getattr(self, self.engine)


class RewardSpecConfig(Section):
    fn: str
    """A registered reward name, `path/to/file.py:fn`, or `package.module:fn`."""
    weight: float = 1.0
    """Weight of this function in the summed reward."""
    kwargs: dict = {}
    """Keyword arguments bound to the function (e.g. `pattern` for the `format` reward)."""


class TrainerConfig(Section):
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
    """Loss aggregation: GRPO seq_mean_token_mean, DAPO token_mean, Dr. GRPO seq_mean_token_sum_norm."""
    clip_low: float = Field(0.2, ge=0, lt=1)
    """PPO ratio clip below 1 (epsilon_low)."""
    clip_high: float = Field(0.2, ge=0)
    """PPO ratio clip above 1 (epsilon_high; DAPO clip-higher uses 0.28)."""
    dual_clip_c: float | None = Field(None, gt=1)
    """Dual-clip constant for negative advantages (verl uses 3); None disables."""
    kl_coef: float = Field(0.0, ge=0)
    """Weight of the k3 KL penalty to the reference (initial) model; 0 disables it and loads no reference."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes (mu) over each rollout batch."""
    micro_batch_size: int = Field(64, ge=1)
    """Samples per forward/backward; gradients accumulate over the whole batch for one optimizer step per epoch."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal and generate more until the batch is full."""
    max_resample_rounds: int = Field(3, ge=0)
    """Extra generation rounds allowed per step when dynamic sampling removed groups."""
    offpolicy: str | None = None
    """Off-policy correction (registered in `trainers.offpolicy`): none, tis_token, tis_seq, mask, decoupled.
    Unset: `decoupled` (AReaL's decoupled PPO) when max_staleness > 0, `none` when training is on-policy."""
    is_cap: float = Field(2.0, gt=0)
    """Truncation cap C for TIS importance weights."""
    sync_check_every: int = Field(1, ge=0)
    """Verify the weight sync every N steps: a fixed probe batch is scored by the trainer and the engine, and a
    log-prob mismatch above `sync_check_tol` stops the job (0 disables)."""
    sync_check_tol: float = Field(1e-4, gt=0)
    """Largest allowed |trainer - engine| log-prob difference on the probe batch (raise it for bf16/fp16)."""
    recompute_old_logprobs: bool = False
    """Recompute the old-policy log-probs with the trainer before the update (needed if engine and trainer differ numerically or ppo_epochs > 1 off-policy). Otherwise the engine's behaviour log-probs are the old log-probs."""


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
    reward: list[RewardSpecConfig] = [RewardSpecConfig(fn="exact_match")]
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
    def _check_strategy(self):
        c = self.cluster
        if c.trainer_ranks > 1 and c.trainer_strategy == "fsdp2" and self.model.lora.enabled:
            raise ValueError("cluster.trainer_strategy=fsdp2 with model.lora.enabled=true: FSDP2 here shards full "
                             "fine-tuning only (a LoRA adapter is small: use cluster.trainer_strategy=ddp)")
        return self

