"""Test-wide environment: vLLM/Ray runtime defaults and a model cache kept inside the checkout."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for k, v in {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "RAY_AUTH_MODE": "disabled",
             "TOKENIZERS_PARALLELISM": "false", "TF_CPP_MIN_LOG_LEVEL": "2",
             "ORCHARD_CACHE": str(ROOT / ".cache" / "orchard-test")}.items():
    os.environ.setdefault(k, v)
