"""`multi_turn`: episodes of an agent against a text environment, the env stepped beside generation.

One engine call per turn over every episode still running (batched), then one batched env step. What the trainer
gets is exactly what the engine generated: a step's `token_ids`, `logprobs` and `versions` are the engine's own,
and the next step's context is `context + token_ids + observation_ids` (the observation tokenised once, appended as
ids: the history is never re-tokenised from text, which would change ids, e.g. drop an EOS or merge pieces).
Observation tokens only ever appear in a later step's `context_ids`, never in `token_ids`, so they are outside the
loss by construction. With a tokenizer that has a chat template (and `chat_template` not False) the first
observation is a user message with the generation prompt, and each later observation is the text the template puts
after an assistant turn: the end of that turn (unless the engine generated it), a user message, and the next
assistant header.

A turn whose context plus `max_new_tokens` would not fit `max_context` is not generated: the episode ends there
with `info["end"] = "context_overflow"` on its last step (`"env"` when the env ended it, `"dropped"` when the
env broke and `on_error: drop`). Every step's info holds the env's info plus `utterance` (the decoded text the env
got), `observation` (the env's reply) and `turn`. A turn's sampling seed is `chunk_seed(task seed, turn)`, so a
task replays from its seeds.

On a rollout worker (`run`), a `RolloutTask`'s prompt entries are one-element lists `[env_seed]` and each gives
`group_size` episodes; `between(turn)` before every turn but the first lets the worker load newer weights, so an
episode's later turns may carry a newer policy version (each token records its own).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from envs.text.base import env_factory
from rl.errors import ConfigError
from envs.text.batch import TextEnvBatch
from rollout.runners.base import RUNNERS, Between
from rollout.runners.chunked import chunk_seed
from rollout.types import RolloutTask, SamplingParams, Step, Trajectory


@RUNNERS.register("multi_turn")
@dataclass
class MultiTurnRunner:
    env: str
    """A text env (`envs.text.env_factory`: registered name, textarena/<GameId>, or file.py:Class)."""
    tokenizer_path: str
    """The policy's model directory (its tokenizer encodes observations and decodes utterances)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    max_turns: int = 20
    on_error: str = "raise"
    max_context: int = 512
    chat_template: bool | None = None
    """None: use the tokenizer's chat template if it has one; False: plain text; True: required."""
    mid_task_weights = True

    @classmethod
    def from_config(cls, rollout) -> "MultiTurnRunner":
        raise ValueError("rollout.runner=multi_turn needs a text env: the grpo job does not take one yet; use the "
                         "agent jobs (algo: agent_grpo, archer or filtered_bc; configs/grpo_agent_twenty_questions.yaml)")

    def __post_init__(self):
        from transformers import AutoTokenizer

        self.factory = env_factory(self.env, self.env_kwargs)
        self.tok = AutoTokenizer.from_pretrained(self.tokenizer_path)
        has = bool(getattr(self.tok, "chat_template", None))
        if self.chat_template and not has:
            raise ValueError(f"multi_turn runner: chat_template=True but {self.tokenizer_path} has no chat template")
        self.use_chat = has if self.chat_template is None else self.chat_template

    def __getstate__(self) -> dict:
        """Travels to a Ray worker as its settings: the worker rebuilds the env factory and the tokenizer (a user
        env loaded from a file has a module name that only this process can import)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("factory", "tok", "use_chat")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    # --- observation -> token ids ----------------------------------------------------------------------------------
    def first_ids(self, observation: str) -> list[int]:
        if self.use_chat:
            return list(self.tok.apply_chat_template([{"role": "user", "content": observation}],
                                                     add_generation_prompt=True, tokenize=True, return_dict=False))
        return self.tok(observation, add_special_tokens=False)["input_ids"]

    def observation_ids(self, observation: str, generated_eos: bool) -> list[int]:
        if not self.use_chat:
            return self.tok(observation, add_special_tokens=False)["input_ids"]
        marker = "\x00ASSISTANT\x00"
        msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": marker},
                {"role": "user", "content": observation}]
        text = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        rest = text[text.index(marker) + len(marker):]
        eos = self.tok.eos_token or ""
        if generated_eos and eos and rest.startswith(eos):
            rest = rest[len(eos):]
        return self.tok(rest, add_special_tokens=False)["input_ids"]

    # --- episodes --------------------------------------------------------------------------------------------------
    def run_episodes(self, engine, seeds: list[int], sampling: SamplingParams,
                     between: Between | None = None) -> list[Trajectory]:
        """One trajectory per seed (in order). Dropped episodes (on_error: drop) come back with
        `info["end"] == "dropped"` on their last step (or no steps if reset broke)."""
        batch = TextEnvBatch(self.env, self.factory, self.max_turns, self.on_error)
        obs = batch.reset(seeds)
        ctx = [self.first_ids(o) if not batch.done[i] else [] for i, o in enumerate(obs)]
        steps: list[list[Step]] = [[] for _ in seeds]
        for i, c in enumerate(ctx):
            if not batch.done[i] and len(c) + sampling.max_new_tokens > self.max_context:
                raise ConfigError(f"multi_turn runner: env '{self.env}' seed {seeds[i]}: the first observation is "
                                  f"{len(c)} tokens; with max_new_tokens={sampling.max_new_tokens} it does not fit "
                                  f"max_context={self.max_context} (a policy with a longer context, or a smaller "
                                  f"rollout.max_new_tokens)")
        turn = 0
        while not all(batch.done):
            if turn > 0 and between is not None:
                between(turn)
            live = []
            for i in range(len(seeds)):
                if batch.done[i]:
                    continue
                if len(ctx[i]) + sampling.max_new_tokens > self.max_context:
                    batch.abandon(i)
                    steps[i][-1].done = True
                    steps[i][-1].info["end"] = "context_overflow"
                else:
                    live.append(i)
            if not live:
                break
            out = engine.generate([ctx[i] for i in live], replace(sampling, seed=chunk_seed(sampling.seed, turn)))
            utterances: list[str | None] = [None] * len(seeds)
            for i, s in zip(live, out):
                utterances[i] = self.tok.decode(s.completion_ids, skip_special_tokens=True).strip()
            obs, rewards, dones, infos = batch.step(utterances)
            for i, s in zip(live, out):
                end = "dropped" if batch.dropped[i] else ("env" if dones[i] else None)
                info = {**infos[i], "utterance": utterances[i], "observation": obs[i], "turn": turn}
                if end:
                    info["end"] = end
                steps[i].append(Step.from_sample(s, reward=rewards[i], done=dones[i], info=info))
                if not dones[i]:
                    ctx[i] = ctx[i] + s.completion_ids + self.observation_ids(obs[i], s.finish_reason == "stop")
            turn += 1
        for i, d in enumerate(batch.dropped):
            if d is not None and steps[i]:
                steps[i][-1].info.update(end="dropped", dropped=d)
        return [Trajectory(s) for s in steps]

    def run(self, engine, task: RolloutTask, between: Between) -> list[Trajectory]:
        seeds = []
        for p in task.prompts:
            if len(p) != 1:
                raise ValueError(f"multi_turn runner: task {task.task_id}: a prompt entry must be [env_seed], got "
                                 f"{len(p)} ids")
            seeds += [int(p[0])] * task.group_size
        return self.run_episodes(engine, seeds, task.sampling, between)


def episode_ids(traj: Trajectory) -> tuple[list[int], list[int], list[int]]:
    """The whole episode as one sequence: (ids, policy-token mask, turn index of each policy token or -1), built
    from the last step's context (which holds every earlier turn's ids) plus its generated ids. Checks that each
    step's context extends the previous step's context and tokens (the no-re-tokenisation invariant)."""
    for a, b in zip(traj.steps, traj.steps[1:]):
        prefix = a.context_ids + a.token_ids
        if b.context_ids[:len(prefix)] != prefix:
            raise ValueError("episode_ids: a step's context does not extend the previous context + generated ids")
    last = traj.steps[-1]
    ids = last.context_ids + last.token_ids
    mask, turn = [0] * len(ids), [-1] * len(ids)
    for t, s in enumerate(traj.steps):
        start = len(s.context_ids)
        for j in range(start, start + len(s.token_ids)):
            mask[j], turn[j] = 1, t
    return ids, mask, turn
