"""Resolve a reward reference to a callable: a registered name, `path/to/file.py:fn`, or `package.module:fn`.

Loading a file (`spec_from_file_location`):
- The module gets a unique name, `_orchard_reward_<hash of its directory>.<file stem>`, so two users' `rewards.py`
  never collide with each other or with an installed module, and loading the same file twice reuses it.
- Its directory becomes a synthetic package (same unique name), so relative imports of sibling files work:
  `from .helpers import f`.
- Its directory is also *appended* (permanently, so imports done inside the function at call time work too) to
  `sys.path`, so script-style sibling imports work: `import helpers`. Appended, not prepended, so a user's file
  can never shadow a module the platform imports later; if a sibling's name collides with an installed module,
  the installed one wins: use the relative form, which always finds the sibling.

Every failure raises `ConfigError` naming the reference and what is wrong (with did-you-mean suggestions).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
import types
from pathlib import Path
from typing import Callable

from rl.errors import ConfigError
from rl.registry import did_you_mean
from rewards.builtin import REWARDS

_REF_FORMS = "a registered reward name, 'path/to/file.py:function' or 'package.module:function'"


def load_reward_fn(ref: str) -> tuple[str, Callable]:
    """(display name, function) for `ref`. The display name is the registered name or the function's name."""
    if ref in REWARDS:
        return ref, REWARDS.get(ref)
    if ":" not in ref:
        raise ConfigError(_not_registered_message(ref))
    target, attr = ref.rsplit(":", 1)
    if not target or not attr.isidentifier():
        raise ConfigError(f"reward '{ref}': expected {_REF_FORMS}")
    if _is_path(target):
        module, where = _load_file(Path(target).expanduser(), ref), f"file {target}"
    else:
        module, where = _import_module(target, ref), f"module '{target}'"
    return attr, _get_function(module, attr, ref, where)


def load_user_object(ref: str, kind: str) -> Callable:
    """The callable `Name` of a user reference `path/to/file.py:Name` or `package.module:Name`, loaded as reward
    files are (errors name `kind` and the reference). Used for user text environments (envs/text)."""
    target, _, attr = ref.rpartition(":")
    if not target or not attr.isidentifier():
        raise ConfigError(f"{kind} '{ref}': expected 'path/to/file.py:Name' or 'package.module:Name'")
    if _is_path(target):
        module, where = _load_file(Path(target).expanduser(), ref, kind), f"file {target}"
    else:
        module, where = _import_module(target, ref, kind), f"module '{target}'"
    return _get_function(module, attr, ref, where, kind)


def check_signature(name: str, fn: Callable) -> None:
    """The runner calls `fn(prompts=..., completions=..., **columns)` by keyword, as TRL does (so TRL's
    `def f(completions, **kwargs)` works unchanged). Raises ConfigError unless `fn` can take both by keyword
    (a `**kwargs` catch-all counts). Unchecked when the signature cannot be inspected."""
    params = _signature_params(fn)
    if params is None or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    missing = [n for n in ("prompts", "completions") if n not in params or params[n].kind is params[n].POSITIONAL_ONLY]
    if missing:
        raise ConfigError(f"reward '{name}' cannot take {' and '.join(missing)} as keyword argument(s); a reward "
                          f"function has TRL's signature fn(prompts, completions, **dataset_columns)")


def bind_kwargs(name: str, fn: Callable, kwargs: dict) -> Callable:
    """`functools.partial(fn, **kwargs)` after checking that every key names a parameter of `fn` other than
    prompts/completions. Catches typos at load: built-ins also take `**columns`, which would otherwise swallow a
    misspelt `patern` in silence. So a user function that reads a config value must declare it as a parameter."""
    if not kwargs:
        return fn
    names = _keyword_names(fn)
    if names is not None:
        for key in kwargs:
            if key not in names:
                raise ConfigError(f"reward '{name}': unknown kwarg '{key}'{did_you_mean(key, names)}; the function's "
                                  f"keyword parameters besides prompts/completions: {', '.join(names) or '(none)'}")
    return functools.partial(fn, **kwargs)


def required_columns(fn: Callable) -> list[str]:
    """Parameters of `fn` without a default, other than prompts/completions (a partial's bound ones have one):
    they must come from dataset columns. [] when the signature cannot be inspected."""
    params = _signature_params(fn) or {}
    return [n for n in _keyword_names(fn) or [] if params[n].default is params[n].empty]


def _signature_params(fn: Callable) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # some C callables have no signature: nothing to check against
        return None


def _keyword_names(fn: Callable) -> list[str] | None:
    """Parameters that can be passed by keyword, except prompts and completions; None if not inspectable."""
    params = _signature_params(fn)
    if params is None:
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n, p in params.items() if p.kind in named and n not in ("prompts", "completions")]


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _not_registered_message(ref: str) -> str:
    if ref.endswith(".py"):
        return f"reward '{ref}' names a file but no function: write '{ref}:function_name'"
    return (f"reward '{ref}' is not a registered reward{did_you_mean(ref, REWARDS.names())}; registered: "
            f"{', '.join(REWARDS.names())}; a user function is referenced as 'path/to/file.py:function' or "
            f"'package.module:function'")


def _synthetic_package(directory: Path) -> str:
    """Register (once) an empty package whose __path__ is `directory`; returns its unique name."""
    name = "_orchard_reward_" + hashlib.sha1(str(directory).encode()).hexdigest()[:12]
    if name not in sys.modules:
        pkg = types.ModuleType(name, f"Reward files under {directory} (loaded by rewards.loader)")
        pkg.__path__ = [str(directory)]
        pkg.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        pkg.__spec__.submodule_search_locations = [str(directory)]
        sys.modules[name] = pkg
    return name


def _load_file(path: Path, ref: str, kind: str = "reward") -> types.ModuleType:
    """Import a user's file under a unique module name (see module docstring); failures name the file."""
    path = path.resolve()
    if not path.is_file():
        hint = "" if path.parent.is_dir() else f" (directory {path.parent} does not exist either)"
        raise ConfigError(f"{kind} '{ref}': file not found: {path}{hint}")
    name = f"{_synthetic_package(path.parent)}.{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[name]
        raise ConfigError(f"{kind} '{ref}': importing {path} failed: {type(e).__name__}: {e}") from e
    return module


def _import_module(target: str, ref: str, kind: str = "reward") -> types.ModuleType:
    """importlib.import_module, telling "no such module" apart from "the module raised while importing"."""
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name and (target == e.name or target.startswith(e.name + ".")):
            raise ConfigError(f"{kind} '{ref}': no module named '{e.name}' (is the package installed, or is its "
                              f"parent directory on PYTHONPATH? For a file, write 'path/to/file.py:function')") from e
        raise ConfigError(f"{kind} '{ref}': importing module '{target}' failed: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise ConfigError(f"{kind} '{ref}': importing module '{target}' failed: {type(e).__name__}: {e}") from e


def _get_function(module: types.ModuleType, attr: str, ref: str, where: str, kind: str = "reward") -> Callable:
    """module.attr, which must exist and be callable."""
    if not hasattr(module, attr):
        public = sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v)
                        and getattr(v, "__module__", None) == module.__name__)
        raise ConfigError(f"{kind} '{ref}': {where} has no attribute '{attr}'{did_you_mean(attr, public)}; "
                          f"functions defined there: {', '.join(public) or '(none)'}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise ConfigError(f"{kind} '{ref}': '{attr}' in {where} is a {type(fn).__name__}, not a function")
    return fn
