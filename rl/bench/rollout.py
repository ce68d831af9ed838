"""Rollout engine throughput: tokens/s of the vLLM and HF engines at three model sizes, vs the compute bound.

The compute bound is the machine's measured fp32 matmul FLOP/s divided by 2 x params FLOPs per generated token.
Each (engine, size) cell runs in a fresh subprocess (vLLM's in-process engine keeps global state), one after the
other in one run, on random-init zoo models (`random-3m`, `random-30m`, `random-100m`).
"""
from __future__ import annotations

import json
import math
import sys
import time

from rl.bench.common import run_child, write_report

SIZES = ["3m", "30m", "100m"]
ENGINES = ["hf", "vllm"]


def add_arguments(p) -> None:
    import argparse

    p.add_argument("--sizes", default=",".join(SIZES), help="comma list of zoo sizes: 3m,30m,100m")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma list: hf,vllm")
    p.add_argument("--prompts", type=int, default=128, help="prompts per generate call")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt")
    p.add_argument("--repeats", type=int, default=3, help="timed generate calls per cell (after one warm-up)")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds one (engine, size) cell may take; a cell past it is reported as an error row")
    p.add_argument("--worker", nargs=2, metavar=("ENGINE", "SIZE"), help=argparse.SUPPRESS)


def matmul_flops(n: int = 1024, reps: int = 10) -> float:
    """Measured fp32 matmul FLOP/s on this machine (torch, all threads)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def _cell(engine_kind: str, size: str, prompts: int, new_tokens: int, repeats: int) -> dict:
    import torch

    from rl.zoo import build
    from rollout.engine import make_engine
    from rollout.types import SamplingParams

    path = build(f"random-{size}")
    n_params = _param_count(path)
    options = {"max_batch": prompts}
    if engine_kind == "vllm":
        options.update(max_model_len=256, gpu_memory_utilization=0.5, enforce_eager=True)
    engine = make_engine(engine_kind, str(path), dtype="float32", seed=0, options=options)
    rng = torch.Generator().manual_seed(0)
    batch = [torch.randint(4, 60, (int(torch.randint(4, 12, (1,), generator=rng)),), generator=rng).tolist()
             for _ in range(prompts)]
    # ignore EOS by sampling at T=1 with a fixed length budget: random models rarely stop early; count real tokens.
    sp = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0)
    engine.generate(batch[:8], sp)  # warm-up
    times, tokens = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        out = engine.generate(batch, SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=i + 1))
        times.append(time.perf_counter() - t0)
        tokens.append(sum(len(s.completion_ids) for s in out))
    engine.close()
    flops = matmul_flops()
    tok_s = sum(tokens) / sum(times)
    bound = flops / (2 * n_params)
    return {"engine": engine_kind, "size": size, "params_M": n_params / 1e6, "tokens_per_s": tok_s,
            "bound_tokens_per_s": bound, "fraction_of_bound": tok_s / bound, "matmul_gflops": flops / 1e9,
            "prompts": prompts, "new_tokens": new_tokens}


def _param_count(path) -> int:
    from safetensors import safe_open

    n = 0
    for f in path.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return n


def run(a) -> dict:
    if a.worker:
        res = _cell(a.worker[0], a.worker[1], a.prompts, a.new_tokens, a.repeats)
        print("RESULT " + json.dumps(res))
        return res
    from rl.zoo import build

    sizes, engines = a.sizes.split(","), a.engines.split(",")
    for s in sizes:
        build(f"random-{s}")  # build outside the timed cells
    rows = []
    for size in sizes:
        for eng in engines:
            cmd = [sys.executable, "-m", "rl.cli", "bench", "rollout", "--worker", eng, size, "--prompts", str(a.prompts),
                   "--new-tokens", str(a.new_tokens), "--repeats", str(a.repeats)]
            try:  # a failed or timed-out cell becomes an error row; the others still run
                proc = run_child(cmd, label=f"{eng} {size}", timeout=a.timeout)
            except RuntimeError as e:
                rows.append({"engine": eng, "size": size, "error": str(e).strip().splitlines()[-1:]})
                continue
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                rows.append({"engine": eng, "size": size, "error": "no RESULT line in the cell's output"})
                continue
            rows.append(json.loads(line[len("RESULT "):]))
            print(f"{eng:5s} {size:5s} {rows[-1]['tokens_per_s']:.0f} tok/s", file=sys.stderr)
    ratios = {}
    for size in sizes:
        cells = {r["engine"]: r for r in rows if r["size"] == size and "tokens_per_s" in r}
        if "hf" in cells and "vllm" in cells:
            ratios[size] = cells["vllm"]["tokens_per_s"] / cells["hf"]["tokens_per_s"]
    notes = "vLLM / HF tokens/s ratio per size: " + ", ".join(f"{k}: {v:.2f}x" for k, v in ratios.items())
    write_report("rollout", rows, a.out, extra={"vllm_over_hf": ratios}, notes=notes,
                 columns=["engine", "size", "params_M", "tokens_per_s", "bound_tokens_per_s", "fraction_of_bound", "error"])
    return {"rows": rows, "ratios": ratios}
