"""Resolve a reward reference to a callable: a registered name, `path/to/file.py:fn`, or `pkg.module:fn`."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from rl.errors import ConfigError
from rl.registry import did_you_mean
from rewards.builtin import REWARDS


def _load_file(path: Path, ref: str):
    """Import a user's file under a unique module name (no collisions with other files of the same name).
    The file's directory goes on sys.path so it can import its sibling modules."""
    if not path.is_file():
        raise ConfigError(f"reward '{ref}': file not found: {path}")
    name = f"orchard_user_reward_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    parent = str(path.resolve().parent)
    if parent not in sys.path:
        sys.path.append(parent)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ConfigError(f"reward '{ref}': importing {path} failed: {type(e).__name__}: {e}") from e
    return module


def load_reward_fn(ref: str) -> tuple[str, Callable]:
    """(display name, function) for `ref`. Errors name the reference and what is wrong with it."""
    if ref in REWARDS:
        return ref, REWARDS.get(ref)
    if ":" not in ref:
        raise ConfigError(f"reward '{ref}' is not a registered reward{did_you_mean(ref, REWARDS.names())} and not "
                          f"'path/to/file.py:fn' or 'package.module:fn'; registered: {', '.join(REWARDS.names())}")
    target, attr = ref.rsplit(":", 1)
    if target.endswith(".py") or "/" in target or Path(target).is_file():
        module = _load_file(Path(target).expanduser(), ref)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ConfigError(f"reward '{ref}': cannot import module '{target}': {e}") from e
    if not hasattr(module, attr):
        public = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ConfigError(f"reward '{ref}': '{target}' has no attribute '{attr}'{did_you_mean(attr, public)}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise ConfigError(f"reward '{ref}': '{attr}' is a {type(fn).__name__}, not a function")
    return attr, fn
