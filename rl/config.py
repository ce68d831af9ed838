"""Typed configuration: the one source of truth.

Every job has a pydantic config class whose fields carry their defaults, bounds and a docstring (shown by
`rl train --help-config`). YAML recipes in `configs/` hold overrides only; `key=value` CLI overrides use dotted
paths (`trainer.lr=3e-6`). The YAML key `algo` picks the job (default `grpo`).

Errors are raised as `ConfigError` naming the dotted path: unknown keys get a did-you-mean, wrong types name
the expected type, out-of-bounds values name the bound.
"""
from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from rl.errors import ConfigError
from rl.registry import did_you_mean


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, docstrings are docs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class CheckpointConfig(Section):
    every: int = 0
    """Save a checkpoint every N steps (0: only at the end of the run)."""
    keep: int = 2
    """How many most recent checkpoints to keep on disk (older ones are deleted after a new one is complete)."""


class WandbConfig(Section):
    project: str = "orchard"
    """W&B project name."""
    mode: Literal["offline", "online", "disabled"] = "offline"
    """`offline`: write the W&B run under <run_dir>/wandb, nothing leaves the machine; `online`: stream it to the W&B
    server (needs `wandb login`); `disabled`: W&B calls do nothing."""
    entity: str | None = None
    """W&B entity (user or team); None: your default."""
    name: str | None = None
    """W&B run name; None: the run directory's name."""


class LogConfig(Section):
    tensorboard: bool = True
    """Write TensorBoard event files under `<run_dir>/tb`."""
    progress: bool = True
    """Show a live progress bar (disabled automatically when stdout is not a terminal)."""
    every: int = 1
    """Log metrics every N steps."""
    wandb: WandbConfig | None = None
    """Also log every metrics row to Weights & Biases (`rl/wandb_log.py`), e.g. `log.wandb.project=myproj`
    (`mode` defaults to offline: the W&B run stays under <run_dir>/wandb). None: no W&B."""


class JobConfig(Section):
    """Fields shared by every job. Job configs (GRPO, PPO, ...) extend this with their own sections."""

    algo: str = "grpo"
    """Which job to run: one of the names `rl train --list` prints."""
    seed: int = 0
    """Seed for every RNG (python, numpy, torch, JAX, data order, sampling)."""
    run_dir: str | None = None
    """Where the run directory goes (default: `runs/<algo>-<timestamp>`)."""
    checkpoint: CheckpointConfig = CheckpointConfig()
    """Checkpointing."""
    log: LogConfig = LogConfig()
    """Logging and progress display."""


# --- job registry: algo name -> "module:attribute" of a `rl.jobs.Job`, imported lazily (JAX/vLLM are heavy).
JOBS: dict[str, str] = {
    "grpo": "trainers.grpo.job:JOB",
    "ppo": "trainers.ppo.job:JOB",
    "ippo": "trainers.marl.job:JOB",
    "mappo": "trainers.marl.job:MAPPO_JOB",
    "sac": "trainers.sac.job:JOB",
    "archer": "trainers.agents.job:ARCHER_JOB",
    "agent_grpo": "trainers.agents.job:GRPO_JOB",
    "filtered_bc": "trainers.agents.job:BC_JOB",
    "btm": "trainers.btm.job:JOB",
}


def get_job(name: str):
    if name not in JOBS:
        raise ConfigError(f"algo: unknown job '{name}'{did_you_mean(name, JOBS)}; known: {', '.join(sorted(JOBS))}")
    mod, attr = JOBS[name].split(":")
    return getattr(importlib.import_module(mod), attr)


# --- loading ----------------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", parsed value). Values are parsed as YAML scalars/flow collections."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. trainer.lr=3e-6)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{'.'.join(parts[: i + 1])}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns location `loc` (for did-you-mean on unknown keys)."""
    model = cls
    for part in loc:
        if not isinstance(part, str) or model is None:
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def format_validation_error(cls: type[BaseModel], err: ValidationError, source: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            parent = _model_at(cls, loc[:-1])
            hint = did_you_mean(loc[-1], parent.model_fields) if parent else ""
            lines.append(f"{path}: unknown key{hint}")
        elif e["type"] == "missing":
            lines.append(f"{path}: required key is missing")
        elif isinstance(e.get("input"), dict):  # a check across keys (a model validator): its message names them
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {msg}" if path else msg)
        else:
            lines.append(f"{path}: {e['msg']} (got {e.get('input')!r})")
    where = f" in {source}" if source else ""
    return f"invalid config{where}:\n  " + "\n  ".join(lines)


def validate(cls: type[BaseModel], tree: dict, source: str = "") -> BaseModel:
    try:
        return cls.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(cls, err, source)) from None


def shipped_recipes() -> dict[str, Path]:
    """The recipes that ship with Orchard (the `configs` package), by file name."""
    import configs

    return {f.name: f for f in sorted(Path(configs.__file__).parent.glob("*.yaml"))}


def resolve_recipe(path: str | Path) -> Path:
    """A YAML file as given or, when there is none, the shipped recipe of that name from any directory:
    `configs/grpo_tiny.yaml`, `grpo_tiny.yaml` and `grpo_tiny` all name `grpo_tiny.yaml`."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    shipped = shipped_recipes()
    name = p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml"
    if (p.parent == Path(".") or p.parent.name == "configs") and name in shipped:
        return shipped[name]
    raise ConfigError(f"config file not found: {p}{did_you_mean(name, shipped)}; shipped recipes (usable from any "
                      f"directory by name): {', '.join(n.removesuffix('.yaml') for n in shipped)}")


def read_yaml(path: str | Path) -> dict:
    p = resolve_recipe(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> JobConfig:
    """Read a YAML recipe (or nothing), apply dotted overrides, pick the job by `algo`, validate."""
    tree: dict = copy.deepcopy(read_yaml(path)) if path else {}
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    algo = tree.get("algo", "grpo")
    job = get_job(algo)
    source = " + ".join(x for x in (str(path) if path else "", "command-line overrides" if overrides else "") if x)
    return validate(job.config_cls, tree, source=source or "defaults")


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per field, `dotted.key = default  # docstring`, recursing into sections."""
    out = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        sub = _model_at(cls, (name,))
        if sub is not None and field.annotation is sub:
            out.append(f"{key}:  # {field.description or ''}")
            out.extend(describe(sub, key + "."))
        else:
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json")
            out.append(f"{key} = {default!r}  # {field.description or ''}")
    return out
