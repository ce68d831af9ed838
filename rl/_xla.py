"""JAX/XLA:CPU settings of our JAX jobs (the `rl`, `envs` and `trainers` packages import this, which applies the XLA
flag; `envs.marl`, `trainers.marl` and the gymnax vector env call `configure_jax`).

1. **The MARL "stall" was a deadlock in jaxlib 0.10.x's LAPACK kernels, not a lost wake-up.** jaxlib 0.10.0-0.10.2
   split a batched LAPACK call (QR, Cholesky, eigh, ... under `jax.vmap`) over XLA:CPU's intra-op thread pool
   (`jax::ParallelBatchMap`) and block the calling thread in `BlockingCounter::Wait` until the pieces are done.
   XLA's thunk executor runs independent thunks on that same pool (`ThunkExecutor::SplitReadyQueue`), so when every
   pool thread (one per CPU of the process's affinity: 2 here) is inside such a kernel, waiting, nothing is left to
   run the pieces and the call never returns. Our IPPO/MAPPO init is exactly that: flax's `orthogonal` initializer
   (geqrf + orgqr) vmapped over seeds, actor and critic layers independent. Native stack of a hung MAPPO init
   (jaxlib 0.10.2, py-spy + gdb, rl/bench/xla_stall_stack.txt): main thread in `tsl::BlockUntilReady` under
   `CpuPjRtRawLoadedExecutable::Execute`; both `tf_XLAEigen` pool threads in `BlockingCounter::Wait` <-
   `jax::ParallelBatchMap` <- `jax::OrthogonalQr::Kernel` <- `lapack_sorgqr_ffi` <- `CustomCallThunk::Execute` <-
   `ThunkExecutor::SplitReadyQueue` <- `Eigen::ThreadPoolTempl::WorkerLoop`; every other thread idle. Every `rl train`
   attempt re-runs the init (also on `--resume`), which is why the bench's MAPPO pair "stalled 6 times in a row".
   jaxlib 0.9.2 has no ParallelBatchMap (a public report says jax 0.11.2 compiles it out of open-source builds; no
   such release is on the registry here).
   Fixes: (a) requirements.txt pins jax/jaxlib 0.9.2 (flax 0.12.6, the newest flax for it; pyproject excludes jaxlib
   0.10.0-0.10.2); (b) `MarlTrainer.init_seeds` initializes the seeds with `lax.map` instead of `vmap` (bit-identical
   numbers), so a 0.10.x install does not hang in our jobs either (a user's own `jax.vmap(make_trainer(cfg).train)` still
   does there). Reproducer for jaxlib maintainers, jax only: `python rl/bench/xla_repro.py`.

   Measured with `python -m rl.bench.xla_stall` (fresh process per run: init, evaluation, a compiled 10-update
   segment; mpe_simple_spread, 16 envs x 128 steps; hang = no CPU progress for 15 s; 2 CPU cores shared with other
   jobs, 2026-12-01). "seeds 2" is `rl bench marl --seeds 2`, the case of issue 14 (the hang comes in the init, so
   one segment call per run); speed: 8 seeds (the bench default), env-steps/s of segment calls 2-5, all seeds
   together, wall clock (per CPU-second in brackets), the two releases interleaved A/B/A/B, 2 runs each:

   | configuration | IPPO hangs / N | MAPPO hangs / N |
   |---|---|---|
   | jax 0.10.2 as shipped before (async dispatch off, vmapped init), seeds 2 | 0 / 5 | 4 / 5, and 4 / 4 probes |
   | same, 8 seeds, 4-5 segment calls per run | 0 / 11 | 0 / 11 |
   | jax 0.10.2 + `--xla_cpu_multi_thread_eigen=false` (PyAutoFit#1528's fix), seeds 2 | | 3 / 3, same stack |
   | jax 0.10.2 + `--xla_force_host_platform_device_count=2`, seeds 2 | | 3 / 3 |
   | jax 0.10.2, `taskset -c 0` (a pool of 1 thread, half the machine), seeds 2 | | 0 / 3 (screen only) |
   | jax 0.10.2, init with `lax.map` over seeds (now `init_seeds`), seeds 2 | | **0 / 20** |
   | jax 0.9.2 + flax 0.12.6, vmapped init (the old code), seeds 2 | **0 / 20** | **0 / 20**, and 0 / 3 |
   | jax 0.9.2, 8 seeds, 5 segment calls per run | 0 / 5 | 0 / 5 |

   | speed, 8 seeds | IPPO env-steps/s | MAPPO env-steps/s |
   |---|---|---|
   | jax 0.10.2 | 37.1k, 38.0k (38.3k, 39.5k per CPU-s) | 34.9k, 35.3k (35.9k, 35.0k) |
   | jax 0.9.2 | 43.2k, 39.1k (40.9k, 40.3k per CPU-s) | 34.2k, 33.8k (35.5k, 35.0k) |

   So the pin costs no speed (IPPO ~4% faster per CPU-second, MAPPO equal); `lax.map` in the init costs nothing
   measurable (the init is one call per job). Not tried, as the stack rules them out (none of them keeps a pool
   thread from blocking inside ParallelBatchMap): `--xla_cpu_parallel_codegen_split_count` (compilation only),
   donating buffers and smaller jit units of the segment (the hang is in the init, before any segment call).
   Earlier measurements (other sessions, ~10 s IPPO training call, 45-60 s timeouts), all explained by the above:
   jaxlib 0.10.2 defaults 3 / 10 hung, 0.10.1 1 / 6, `--xla_cpu_multi_thread_eigen=false` 2 / 6, XNNPACK/YNNPACK
   fusions off 1 / 6, async dispatch off 1 / 21. Eigen threading, async dispatch and the fusion flags do not touch
   ParallelBatchMap; they only move the odds that two QR thunks start together.
   CPU async dispatch stays off (`configure_jax`; escape hatch ORCHARD_JAX_ASYNC_DISPATCH=1): it is not the cause
   (every row above was measured with it off; rl/bench/xla_repro.py hangs with it on), and our jobs jit large calls, so inline dispatch costs nothing visible.
   rl/watchdog.py stays as a safety net (stall detection now 30 s) and `rl bench marl` / `rl train` report the
   reruns it needed: 0 is the healthy case.
2. jaxlib 0.10.2's YNNPACK fusions segfault on some rank-7 reductions (jax-ml/jax#39257, fixed upstream after
   0.10.2): `--xla_cpu_experimental_ynn_fusion_type=` is appended to XLA_FLAGS unless the user set that flag
   (harmless on 0.9.2, which knows the flag).

Both only take effect if JAX's CPU backend has not started yet in this process (importing any Orchard package
sets the flag, so it is in time unless JAX already ran).
"""
import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def disable_ynn_fusion() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=".strip()


def configure_jax() -> None:
    """Call before the first JAX computation of the process (importing jax is not enough to start the backend)."""
    import jax

    if os.environ.get("ORCHARD_JAX_ASYNC_DISPATCH", "0") != "1":  # escape hatch, for comparing
        jax.config.update("jax_cpu_enable_async_dispatch", False)


disable_ynn_fusion()
