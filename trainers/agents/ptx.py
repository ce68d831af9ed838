"""PPO-ptx for the agent trainers (InstructGPT, Ouyang et al. 2022, eq. 2): every policy step adds
`policy.ptx_coef` x the mean NLL of a batch of warm-start episodes (their utterance tokens; the observations are not
in the loss), so RL on the training split does not overwrite what the model knows only from its warm start.

Why a KL to the initial policy does not do this: the KL is taken on the RL episodes' tokens, and twenty_questions'
training episodes never hide a test object, so nothing in them constrains what the policy says about the test
objects (measured: `policy.kl_coef` 0.1-0.2 did not stop the held-out return falling; the README's agents section).

`policy.ptx_data`:
- "warm_start": the zoo model's own warm-start episodes (`WARM_START_EPISODES`, by the `name` in the policy
  directory's zoo.json; tiny-agent: its one "knowledge" episode per object of the table);
- a JSONL file, one episode per line: `{"episode": [["", first observation], [utterance, reply], ...]}` (the last
  reply is not in the loss).
The episodes are rendered with the training runner exactly as it renders its own (`first_ids`, `observation_ids`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from rl.errors import ConfigError
from rl.registry import Registry

WARM_START_EPISODES: Registry[Callable[[], list]] = Registry("warm-start episodes", ("trainers.sft.tiny_agent",))
"""zoo model name -> () -> [[(utterance, reply), ...], ...] (the intro first, as ("", intro))."""


def load_episodes(source: str, model_dir: Path) -> list:
    if source == "warm_start":
        zoo = Path(model_dir) / "zoo.json"
        name = json.loads(zoo.read_text()).get("name") if zoo.exists() else None
        if name not in WARM_START_EPISODES:
            raise ConfigError(f"policy.ptx_data: 'warm_start' needs a zoo policy with registered warm-start episodes "
                              f"({', '.join(WARM_START_EPISODES.names())}); {model_dir} is "
                              f"{'zoo model ' + repr(name) if name else 'not a zoo model'}: give a JSONL file of "
                              f"episodes instead")
        return WARM_START_EPISODES.get(name)()
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"policy.ptx_data: no such file {source!r} (expected 'warm_start' or a JSONL file of "
                          f"episodes)")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            ep = json.loads(line)["episode"]
            turns = [(str(u), str(r)) for u, r in ep]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"policy.ptx_data: {path}:{n}: expected {{\"episode\": [[\"\", observation], "
                              f"[utterance, reply], ...]}} ({type(e).__name__}: {e})") from None
        if len(turns) < 2:
            raise ConfigError(f"policy.ptx_data: {path}:{n}: an episode needs its first observation and at least "
                              f"one utterance")
        out.append(turns)
    if not out:
        raise ConfigError(f"policy.ptx_data: {path} holds no episodes")
    return out


class PtxReplay:
    """Batches of the encoded episodes, drawn with their own seeded generator (its state is checkpointed)."""

    def __init__(self, runner, source: str, model_dir: Path, batch_size: int, seed: int):
        from trainers.sft.tiny_agent import encode_episodes

        self.ids, self.attn, self.mask = encode_episodes(runner, load_episodes(source, model_dir))  # [N, n] each
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def nll(self, policy: torch.nn.Module) -> torch.Tensor:
        """Mean NLL of the utterance tokens of `batch_size` episodes (drawn with replacement). Differentiable."""
        from trainers.agents.episodes import token_logprobs
        from trainers.agents.loss import bc_loss

        i = torch.randint(0, len(self.ids), (self.batch_size,), generator=self.gen)
        lp = token_logprobs(policy, self.ids[i], self.attn[i])  # [b, n] log p(token j | < j)
        return bc_loss(lp, self.mask[i])[0]  # mask [b, n]: 1 at the episodes' utterance tokens

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, d: dict) -> None:
        self.gen.set_state(d["gen"])
