"""Config of the multi-turn agent jobs `archer`, `agent_grpo` and `filtered_bc` (one class: they share the env,
policy, rollout and evaluation, and differ in their own section). The budget unit they share is the env episode:
`iterations` x episodes per iteration (`rollout.episodes_per_iter`; agent_grpo: seeds_per_iter x group_size)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rl.cluster import ClusterConfig, resolve_backend
from rl.config import JobConfig, Section
from trainers.offpolicy import OffPolicyConfig


class PolicyConfig(Section):
    path: str = "tiny-agent"
    """The agent: a zoo model (`rl models`) or a local HF causal-LM directory."""
    lr: float = Field(1e-4, gt=0)
    """Adam learning rate of the policy."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient-norm clip of every policy step."""
    kl_coef: float = Field(0.0, ge=0)
    """agent_grpo and archer: + kl_coef x the k3 KL of the policy to its initial weights (`policy.path`, frozen), on
    the policy tokens of the loss: an anchor against forgetting what RL never trains on (twenty_questions: the test
    objects the model knows only from its warm start, which a KL on the RL episodes does not protect: see ptx_coef).
    0: no reference model is kept."""
    ptx_coef: float = Field(0.0, ge=0)
    """Every policy step (all three trainers) adds ptx_coef x the NLL of a batch of `ptx_data` episodes (PPO-ptx,
    `trainers/agents/ptx.py`): keeps what the warm start taught beyond the training split."""
    ptx_data: str = "warm_start"
    """ptx episodes: "warm_start" (the zoo policy's own warm-start episodes) or a JSONL file of episodes."""
    ptx_batch_size: int = Field(16, ge=1)
    """ptx episodes per policy step."""


class AgentRollout(Section):
    episodes_per_iter: int = Field(16, ge=1)
    """Env episodes collected per iteration (archer, filtered_bc). agent_grpo collects seeds_per_iter x group_size."""
    max_new_tokens: int = Field(16, ge=1)
    """Longest utterance (tokens) per turn."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of training episodes (evaluation is greedy)."""
    max_context: int | None = Field(None, ge=8)
    """Token budget of an episode's history; a turn that would not fit ends the episode ("context_overflow").
    None: the policy's max_position_embeddings."""
    max_turns: int = Field(50, ge=1)
    """Safety cap: an env still running after this many turns is broken (it must end its own episodes)."""
    on_error: Literal["raise", "drop"] = "raise"
    """A broken env episode (raises, wrong type, never ends): stop the job naming env, seed and turn (raise), or drop
    the episode and count it (`rollout/dropped`)."""
    sync_check_every: int = Field(1, ge=0)
    """Verify the weight sync every N iterations: each rollout worker's log-probs of a fixed probe batch (the job's
    first turns) must match the trainer's within `sync_check_tol` (0: never)."""
    sync_check_tol: float = Field(1e-4, gt=0)
    """Largest allowed |worker - trainer| log-prob difference on the probe batch."""


class EvalConfig(Section):
    episodes: int = Field(64, ge=1)
    """Held-out episodes: one episode per seed 0..episodes-1 of the eval env (the same ones every time; greedy, or
    sampled at `eval.temperature` with a fixed sampling seed)."""
    split: str = "test"
    """The eval env's `split` (passed only to envs whose constructor takes one; twenty_questions: objects never
    hidden during training). Eval seeds are 10**6 + i, outside the training seeds' range, for every env."""
    every: int = Field(5, ge=1)
    """Evaluate every N iterations (and before the first and after the last)."""
    temperature: float = Field(0.0, ge=0)
    """0: greedy. With a deterministic env a greedy policy plays one episode per hidden object (twenty_questions'
    test split has 8 objects: 64 greedy episodes are 8 distinct ones, repeated); > 0 samples (seeded) and measures
    the stochastic policy that training improves."""


class GRPOSection(OffPolicyConfig):
    """agent_grpo. `offpolicy` (resolved like GRPO's `trainer.offpolicy`: decoupled when max_staleness > 0, else
    none): with none the clipped ratio is taken against the episodes' behaviour log-probs (PPO as the peers do);
    with a correction it is taken against the trainer's own policy at the update (the proximal policy of decoupled
    PPO, so the ratio starts at 1) and the correction's weights pi_prox / pi_behav carry the staleness."""

    seeds_per_iter: int = Field(4, ge=1)
    """Env seeds per iteration; each is played `group_size` times (the GRPO group)."""
    group_size: int = Field(8, ge=2)
    """G: episodes per env seed; the advantage is the episode return normalised within its group."""
    clip_eps: float = Field(0.2, gt=0)
    """PPO clip of the token ratio."""
    epochs: int = Field(1, ge=1)
    """Update steps per batch of episodes (DeepSeekMath's mu; every step on the whole batch, the ratio clipped
    against the behaviour log-probs, or the proximal policy of the first step under a correction)."""
    loss_agg: Literal["episode_mean", "token_mean"] = "episode_mean"
    """How token terms are averaged (`trainers.agents.loss.grpo_episode_loss`)."""


class ArcherSection(Section):
    critic_path: str = "tiny-encoder"
    """The critic's encoder: a zoo model or any local HF encoder directory (ArCHer: roberta-base)."""
    critic_lr: float = Field(1e-4, gt=0)
    """Adam learning rate of the critic (encoder and heads)."""
    gamma: float = Field(0.95, ge=0, le=1)
    """Discount per utterance."""
    tau: float = Field(0.1, gt=0, le=1)
    """Soft update of the target critic after each critic step."""
    critic_steps: int = Field(20, ge=1)
    """Critic steps per iteration (official: 50)."""
    actor_steps: int = Field(3, ge=0)
    """Actor steps per iteration after the warm-up (official: 3)."""
    batch_size: int = Field(32, ge=1)
    """Transitions per critic / actor step."""
    warmup_iters: int = Field(3, ge=0)
    """Iterations in which only the critic trains (official: 10-20)."""
    buffer_capacity: int = Field(100_000, ge=1)
    """Replay buffer size (utterance transitions)."""


class BCSection(Section):
    top_fraction: float = Field(0.25, gt=0, le=1)
    """Keep this fraction of each iteration's episodes, highest returns first."""
    steps: int = Field(4, ge=1)
    """Gradient steps per iteration on the kept episodes."""


class AgentConfig(JobConfig):
    algo: Literal["archer", "agent_grpo", "filtered_bc"] = "archer"
    """Which agent trainer."""
    env: str = "twenty_questions"
    """A text env: a registered name (twenty_questions, guess_my_city), textarena/<GameId>, or a user class
    `path/to/file.py:Class` / `package.module:Class`."""
    env_kwargs: dict[str, Any] = {}
    """Keyword arguments of the env (training and evaluation)."""
    split: str = "train"
    """The training env's `split` (passed only to envs whose constructor takes one)."""
    iterations: int = Field(20, ge=1)
    """Training iterations (collect -> update -> sync -> log)."""
    torch_threads: int = Field(1, ge=0)
    """torch intra-op threads (0: torch's default)."""
    max_staleness: int = Field(0, ge=0)
    """How many policy versions the training episodes may lag the trainer (`rollout/controller.py`): 0 is the
    synchronous loop; k > 0 lets the rollout workers play iteration it+1..it+k's episodes while iteration it trains."""
    cluster: ClusterConfig = ClusterConfig()
    """Rollout workers (Ray actors, or one in this process with backend=local) and the weight-sync transport."""
    policy: PolicyConfig = PolicyConfig()
    """The agent policy."""
    rollout: AgentRollout = AgentRollout()
    """Episodes."""
    eval: EvalConfig = EvalConfig()
    """Held-out evaluation."""
    grpo: GRPOSection = GRPOSection()
    """agent_grpo only."""
    archer: ArcherSection = ArcherSection()
    """archer only."""
    bc: BCSection = BCSection()
    """filtered_bc only."""

    @model_validator(mode="after")
    def _resolve_backend(self):
        resolve_backend(self.cluster, overlap=self.max_staleness > 0, engine="hf")  # the agent policy runs on HF
        self.grpo.resolve_offpolicy(self.max_staleness)
        return self

    @model_validator(mode="after")
    def _env_loads(self):
        from envs.text.base import env_factory

        env_factory(self.env, self.env_kwargs_for(self.split), key="env")
        env_factory(self.env, self.env_kwargs_for(self.eval.split), key="eval.split")
        return self

    def env_kwargs_for(self, split: str) -> dict[str, Any]:
        """`env_kwargs`, plus `split` when the env's constructor takes it."""
        from envs.text.base import takes_split

        return {**self.env_kwargs, "split": split} if takes_split(self.env) else dict(self.env_kwargs)

    @property
    def episodes_per_iter(self) -> int:
        return self.grpo.seeds_per_iter * self.grpo.group_size if self.algo == "agent_grpo" else \
            self.rollout.episodes_per_iter
