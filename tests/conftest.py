"""Test-wide environment: vLLM/Ray runtime defaults and a model cache kept inside the checkout; the tiny random
masked-diffusion model that the diffusion engine, estimator, trainer and bench tests share."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for k, v in {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "RAY_AUTH_MODE": "disabled",
             "TOKENIZERS_PARALLELISM": "false", "TF_CPP_MIN_LOG_LEVEL": "2",
             "ORCHARD_CACHE": str(ROOT / ".cache" / "orchard-test")}.items():
    os.environ.setdefault(k, v)


# --- JAX tests run in a watched child process -------------------------------------------------------------------------
# XLA:CPU deadlocked in jitted calls with jaxlib 0.10.x (rl/_xla.py, rl/watchdog.py): a test marked `jax` is run by
# a child pytest that the watchdog kills and reruns (at most twice) when its CPU time stops advancing for 30 s, so a
# deadlock costs seconds instead of CI's whole budget, and a test that deadlocks every time fails (StalledError).
# A real failure in the child fails the test with its output; a rerun is printed.
import sys  # noqa: E402

import pytest  # noqa: E402

IN_CHILD = "ORCHARD_TEST_CHILD"


def pytest_pyfunc_call(pyfuncitem):
    if pyfuncitem.get_closest_marker("jax") is None or os.environ.get(IN_CHILD) == "1":
        return None
    from rl.watchdog import StalledError, run_watched

    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header", pyfuncitem.nodeid]
    try:
        w = run_watched(cmd, label=pyfuncitem.nodeid, stall_s=30, retries=2, env={**os.environ, IN_CHILD: "1"},
                        cwd=str(ROOT))
    except StalledError as e:
        pytest.fail(str(e), pytrace=False)
    if w.stalls:
        print(f"{pyfuncitem.nodeid}: passed after {w.stalls} rerun(s) for an XLA stall", file=sys.stderr)
    if w.returncode == 5:
        pytest.fail(f"child pytest collected nothing for {pyfuncitem.nodeid}", pytrace=False)
    if w.returncode != 0:
        pytest.fail(f"in a child process (exit code {w.returncode}):\n{w.output[-6000:]}", pytrace=False)
    return True


# --- a tiny masked-diffusion model ------------------------------------------------------------------------------------
def save_tiny_mdlm(d: Path, layers: int = 2, intermediate: int = 128) -> Path:
    """A random bidirectional Llama (hidden 64, one head, 64 positions; seeded) with the tiny-mdlm tokenizer ([MASK]
    included), saved to `d` in a second (the zoo's tiny-mdlm takes minutes to build)."""
    import torch
    from transformers import LlamaForCausalLM

    from rl.zoo import ArchSpec, llama_config
    from trainers.sft.tiny_mdlm import mdlm_tokenizer

    tok = mdlm_tokenizer()
    cfg = llama_config(ArchSpec(hidden=64, layers=layers, heads=1, intermediate=intermediate, max_positions=64), tok)
    cfg.is_causal, cfg.mask_token_id = False, tok.mask_token_id
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_mdlm_dir(tmp_path_factory):
    """The 2-layer tiny masked-diffusion model (`save_tiny_mdlm`), built once per test module."""
    return save_tiny_mdlm(tmp_path_factory.mktemp("mdlm"))


@pytest.fixture
def make_tiny_mdlm():
    """`save_tiny_mdlm` itself, for a test that wants another size."""
    return save_tiny_mdlm
