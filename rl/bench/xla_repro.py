"""Standalone reproducer of the XLA:CPU deadlock behind Orchard's MARL stalls (jaxlib 0.10.0-0.10.2); needs only jax.

    python rl/bench/xla_repro.py [--ops N] [--batch B] [--size M] [--calls K] [--timeout S]

One jitted function computes N independent batched QR decompositions (`jnp.linalg.qr` of B matrices M x M each:
LAPACK geqrf + orgqr custom calls). jaxlib 0.10.x's CPU LAPACK kernels split a batch over XLA:CPU's intra-op thread
pool (`jax::ParallelBatchMap`) and block the calling thread in `BlockingCounter::Wait` until the pieces are done.
The thunk executor runs independent custom calls concurrently, on that same pool: once every pool thread (as many as
the CPUs in the process's affinity) is inside such a kernel waiting, no thread is left to run the pieces they wait
for, and the call never returns (main thread in `tsl::BlockUntilReady`, all threads idle). Flax's `orthogonal`
initializer under `jax.vmap` over seeds is exactly this (Orchard's IPPO/MAPPO init).

Exits 0 after K calls, or 1 with the Python stack (faulthandler) when one call takes more than S seconds (calls
take milliseconds; with jaxlib 0.10.2 on 2 CPUs 3 of 3 runs of the defaults failed within 20 calls. Unlike the MARL
init, whose native stack shows an idle deadlock, not every such process here was idle: look at it with py-spy).
jaxlib 0.9.2 (no ParallelBatchMap) does not hang; `--xla_cpu_multi_thread_eigen=false` and async dispatch off do
not help (rl/_xla.py has the table).
"""
import argparse
import faulthandler
import os
import sys
import time


def concurrent_batched_qr(ops: int, batch: int, size: int):
    """A jitted key -> [ops] checksums: `ops` independent QRs, each of a batch of `batch` random size x size matrices."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def f(key):
        keys = jax.random.split(key, ops * batch).reshape(ops, batch, 2)
        return [jnp.linalg.qr(jax.vmap(lambda k: jax.random.normal(k, (size, size)))(keys[i]))[0].sum()
                for i in range(ops)]

    return f


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--ops", type=int, default=0, help="independent QRs per call (default: 4 x the CPUs we may use)")
    p.add_argument("--batch", type=int, default=8, help="matrices per QR (the vmapped seeds)")
    p.add_argument("--size", type=int, default=128, help="matrix size")
    p.add_argument("--calls", type=int, default=20, help="calls (each with fresh inputs)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds after which a call counts as hung")
    a = p.parse_args()

    import jax

    cpus = len(os.sched_getaffinity(0))
    ops = a.ops or 4 * cpus

    f = concurrent_batched_qr(ops, a.batch, a.size)
    import jaxlib

    print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
          f"{cpus} CPUs, {ops} independent QRs of {a.batch} x {a.size}x{a.size} per call", flush=True)
    for i in range(a.calls):
        faulthandler.dump_traceback_later(a.timeout, exit=True)  # a hung call: print the stacks, exit code 1
        t0 = time.perf_counter()
        out = jax.block_until_ready(f(jax.random.PRNGKey(i)))
        faulthandler.cancel_dump_traceback_later()
        print(f"call {i + 1}: {time.perf_counter() - t0:.3f} s, checksum {float(sum(out)):.4f}", flush=True)
    print("no hang")
    return 0


if __name__ == "__main__":
    sys.exit(main())
