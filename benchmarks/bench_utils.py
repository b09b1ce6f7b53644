"""Shared helpers of the benchmarks: thread pinning, best-of timing (interleaved or not),
the machine's matmul peak, what the machine was doing, and markdown tables."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any


def pin_threads(threads: int) -> None:
    """Binds this process to ``threads`` CPUs and tells every BLAS / OpenMP pool so.

    Call before NumPy, JAX or PyTorch load: XLA, OpenBLAS, MKL and OpenMP size their pools
    from the CPUs the process may run on and from these variables.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])


def machine_state() -> dict[str, Any]:
    """Load averages (1, 5, 15 min) and CPU count: was anything else running?"""
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)), "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def first_and_best(fn: Callable[[], Any], repeats: int,
                   sync: Callable[[Any], Any]) -> tuple[Any, float, float]:
    """``(output, best, first)``: the last output of ``fn()``, the best seconds of
    ``repeats`` calls after a first one, and that first call's seconds (compilation
    included); ``sync(output)`` blocks until an output is computed."""
    start = time.perf_counter()
    out = sync(fn())
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = sync(fn())
        best = min(best, time.perf_counter() - start)
    return out, best, first


def interleaved_best(contestants: dict[str, Callable[[], Any]], steps: int, rounds: int,
                     sync: Callable[[Any], Any]) -> dict[str, float]:
    """Seconds per call of each contestant: the best of ``rounds`` rounds of ``steps`` calls.

    Rounds alternate between contestants, so a load that comes and goes on a shared machine
    hits all of them alike. Each contestant is called once first (a warm-up, not timed);
    ``sync(output)`` blocks until an output is computed.
    """
    for fn in contestants.values():
        sync(fn())
    best = {name: float("inf") for name in contestants}
    for _ in range(rounds):
        for name, fn in contestants.items():
            start = time.perf_counter()
            for _ in range(steps):
                out = fn()
            sync(out)
            best[name] = min(best[name], (time.perf_counter() - start) / steps)
    return best


def matmul_peaks(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """float32 GFLOP/s of a square matmul in NumPy, jitted JAX (full float32 precision), and
    PyTorch when installed; plus bfloat16 where the default JAX device is an accelerator.

    On an accelerator the device matmuls are 4x ``size`` a side, so that one product takes
    milliseconds, not the microseconds a Python dispatch costs.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    accelerator = jax.default_backend() != "cpu"
    host = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)

    def rate(fn, n, sync=lambda x: x):
        sync(fn())
        start = time.perf_counter()
        for _ in range(repeats):
            out = fn()
        sync(out)
        return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9

    peaks = {"numpy_float32": rate(lambda: host @ host, size)}
    n = 4 * size if accelerator else size
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    matmul = jax.jit(lambda x: jnp.matmul(x, x, precision=jax.lax.Precision.HIGHEST))
    x = jnp.asarray(a)
    peaks["jax_float32"] = rate(lambda: matmul(x), n, jax.block_until_ready)
    if accelerator:
        xb, matmul_bf16 = x.astype(jnp.bfloat16), jax.jit(jnp.matmul)
        peaks["jax_bfloat16"] = rate(lambda: matmul_bf16(xb, xb), n, jax.block_until_ready)
    try:
        import torch
    except ImportError:
        return peaks
    device = "cuda" if accelerator and torch.cuda.is_available() else "cpu"
    t = torch.from_numpy(a).to(device)
    sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        tb = t.bfloat16()
        peaks["torch_bfloat16"] = rate(lambda: tb @ tb, n, sync)
    peaks["torch_float32"] = rate(lambda: t @ t, n, sync)
    return peaks


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats get thousands separators and no decimals above 100."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
