"""A tiny name -> object registry with a duplicate-name check and did-you-mean lookups.

Used only for small swappable functions (losses, advantages, rewards, envs, datasets), one signature each, and
for the model zoo. A registry can name `providers`: modules that register entries when imported, imported the
first time the registry is read (so a registry in rl core can hold entries defined in packages above it).
"""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


def registered_name(registry: "Registry", name: str) -> str:
    """`name` if `registry` holds it; else a pydantic validation error (pydantic adds the dotted key) with a
    suggestion. For config validators of registered names."""
    from pydantic_core import PydanticCustomError

    if name not in registry:
        raise PydanticCustomError("unknown_name", "unknown {kind} '{name}'{hint}; known: {known}",
                                  {"kind": registry.kind, "name": name, "hint": did_you_mean(name, registry),
                                   "known": ", ".join(registry.names())})
    return name


def did_you_mean(name: str, candidates) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' if none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    def __init__(self, kind: str, providers: tuple[str, ...] = ()):
        self.kind = kind
        self.providers = providers  # module names imported (once, in order) before the first lookup
        self._items: dict[str, T] = {}
        self._loaded = not providers

    def _load_providers(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: a provider that reads this registry while it registers must not recurse
        try:
            for module in self.providers:
                importlib.import_module(module)
        except BaseException:
            self._loaded = False
            raise

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"duplicate {self.kind} name '{name}': already registered by {self._items[name]!r}")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self._load_providers()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise KeyError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}; known: {known}"
            ) from None

    def __contains__(self, name: str) -> bool:
        self._load_providers()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        self._load_providers()
        return sorted(self._items)
