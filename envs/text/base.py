"""The multi-turn text-environment API, its registry, and user environments loaded from `file.py:Class`.

A text environment plays ONE episode at a time (what a user writes, as gymnasium users write one env):

    env = EnvClass(**kwargs)
    observation: str = env.reset(seed)                       # the first observation (task description)
    observation, reward, done, info = env.step(utterance)    # the env's reply to one agent utterance

`envs.text.batch.TextEnvBatch` runs many instances side by side behind the batched API the multi-turn runner uses
(`reset(seeds) -> observations`, `step(utterances) -> observations, rewards, dones, infos`) and checks every call.

Names: `TEXT_ENVS` holds the built-in environments (classes); `textarena/<GameId>` names a TextArena game
(envs/text/textarena.py); anything with a ':' is a user class, `path/to/file.py:Class` or `package.module:Class`,
loaded by the same code that loads user reward functions (rewards/loader.py).
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from rl.errors import ConfigError
from rl.registry import Registry, did_you_mean


class TextEnv(Protocol):
    def reset(self, seed: int) -> str:
        """Start an episode (reproducible from `seed`); return its first observation."""

    def step(self, utterance: str) -> tuple[str, float, bool, dict]:
        """The env's reply to `utterance`: (observation, reward, done, info). info must be JSON-like."""


TEXT_ENVS: Registry[Callable[..., TextEnv]] = Registry(
    "text env", providers=("envs.text.twenty_questions",))
"""Built-in text environments by name (values: classes taking the env's keyword arguments)."""


def takes_split(name: str) -> bool:
    """Whether env `name`'s constructor takes a `split` keyword (train/test partitions of its tasks)."""
    import inspect

    if name.startswith("textarena/"):
        return False
    if name in TEXT_ENVS:
        cls = TEXT_ENVS.get(name)
    elif ":" in name:
        from rewards.loader import load_user_object

        cls = load_user_object(name, "text env")
    else:
        return False  # not an env: env_factory names the problem
    try:
        return "split" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def env_factory(name: str, kwargs: dict[str, Any] | None = None, key: str = "env") -> Callable[[], TextEnv]:
    """A zero-argument function that builds one instance of env `name` (a registered name, `textarena/<GameId>`, or
    a user `file.py:Class` / `pkg.mod:Class`) with `kwargs`. Errors are ConfigErrors naming `key` and the env."""
    kwargs = dict(kwargs or {})
    if name.startswith("textarena/"):
        from envs.text.textarena import textarena_factory

        return textarena_factory(name.removeprefix("textarena/"), kwargs, key)
    if name in TEXT_ENVS:
        cls = TEXT_ENVS.get(name)
    elif ":" in name:
        from rewards.loader import load_user_object

        cls = load_user_object(name, "text env")
    else:
        raise ConfigError(f"{key}: unknown text env '{name}'{did_you_mean(name, TEXT_ENVS.names())}; built-in: "
                          f"{', '.join(TEXT_ENVS.names())}, textarena/<GameId>, or a user class 'path/to/file.py:Class'"
                          f" / 'package.module:Class'")
    try:
        cls(**kwargs)  # fail at load, naming the env, rather than inside a rollout
    except TypeError as e:
        raise ConfigError(f"{key}: text env '{name}' cannot be built with env_kwargs {kwargs}: {e}") from e
    return lambda: cls(**kwargs)
