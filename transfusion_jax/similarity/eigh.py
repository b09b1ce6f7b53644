"""Symmetric eigendecompositions for the CCA family, in graph and side by side on CPU.

In graph, `eigh_upper` reads the upper triangle (row-major arrays being the transpose of what
LAPACK sees, this is ~10% faster on CPU than the lower one at ``d = 2048``);
`eigh_upper_pair` and `eigh_descending_many` decompose several matrices in one batched call
on GPU/TPU, and one matrix per call on CPU. jaxlib's CPU LAPACK kernels (0.10) split a
batched call into tasks on XLA's intra-op thread pool and block until they finish, so a
program holding as many independent batched decompositions as the pool has threads (two on
a 2-core machine) can deadlock, every thread waiting for tasks no thread is left to run
(reproduced here: one jitted program with 8 batched pairs of 200-312 wide covariances hung
on 2 cores; the same decompositions one matrix per call did not).

On CPU, XLA runs ``eigh`` as a LAPACK call (``syevd``) threaded by OpenBLAS. Its first stage,
the reduction to tridiagonal form, is bound by memory bandwidth, so a second BLAS thread helps
one decomposition little: a 2,048^2 float32 ``eigh`` took ~0.78 s on one thread and ~0.6 s on
two (2-core machine). A batched call is worse: XLA spreads the batch over its own threads
while each LAPACK call also starts OpenBLAS threads, the cores are oversubscribed, and two
2,048^2 matrices took anywhere from 1.0 to 2.2 s. `eigh_upper_many` instead gives each
matrix its own host thread running the jitted single-matrix ``eigh``, with the BLAS threads
shared out (one per matrix on 2 cores): the pair takes a steady 0.8-0.95 s. JAX releases the
GIL while a computation runs, and LAPACK calls from different threads are independent.

The BLAS thread count is a process-wide OpenBLAS setting: `eigh_upper_many` lowers it (with
``threadpoolctl``) only while its decompositions run and restores it afterwards. Threads of
the caller's own that use NumPy's BLAS at that moment run with the lowered count too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp

from transfusion_jax.similarity import validation

Eig = tuple[jax.Array, jax.Array]


def eigh_upper(a: jax.Array, *, symmetrize: bool = True) -> Eig:
    """Ascending ``(lam (d,), vec (d, d))`` of the symmetric part of ``a (d, d)``.

    ``symmetrize=False`` skips the ``(a + a^T) / 2`` pass for input already exactly
    symmetric (e.g. from `cca_core.gram`); only the upper triangle is then read.
    """
    vec, lam = jax.lax.linalg.eigh(a, lower=False, symmetrize_input=symmetrize)
    return lam, vec


def eigh_upper_pair(a: jax.Array, b: jax.Array, *, symmetrize: bool = True) -> tuple[Eig, Eig]:
    """`eigh_upper` of two matrices: ``((lam_a, vec_a), (lam_b, vec_b))``, ascending.

    Equal shapes go through one batched call (one kernel launch) on GPU/TPU; on CPU each
    matrix is its own call (see the module docstring: batched CPU calls can deadlock).
    """
    if a.shape != b.shape or _on_cpu():
        return eigh_upper(a, symmetrize=symmetrize), eigh_upper(b, symmetrize=symmetrize)
    lam, vec = eigh_upper(jnp.stack([a, b]), symmetrize=symmetrize)
    return (lam[0], vec[0]), (lam[1], vec[1])


def descending(eig: Eig) -> Eig:
    """Reverses an ascending ``(lam (d,), vec (d, d))`` to descending eigenvalue order."""
    lam, vec = eig
    return lam[::-1], vec[:, ::-1]


def eigh_descending(cov: jax.Array) -> Eig:
    """Eigenvalues ``(d,)`` in descending order and eigenvectors ``(d, d)`` (columns)."""
    return descending(eigh_upper(cov))


def eigh_descending_many(covs: jax.Array) -> Eig:
    """`eigh_descending` of a stack ``(p, d, d)``: ``(lam (p, d), vec (p, d, d))``.

    Batched on GPU/TPU; on CPU a `jax.lax.map` loop of single-matrix calls (see the module
    docstring: batched CPU calls can deadlock).
    """
    if _on_cpu():
        return jax.lax.map(eigh_descending, covs)
    return jax.vmap(eigh_descending)(covs)


def _on_cpu() -> bool:
    """Whether the computation being traced runs on CPU (the default backend)."""
    return jax.default_backend() == "cpu"


def eigh_descending_pair(sxx: jax.Array, syy: jax.Array) -> tuple[Eig, Eig]:
    """`eigh_descending` of both covariances: ``((lam_x, vec_x), (lam_y, vec_y))``."""
    eig_x, eig_y = eigh_upper_pair(sxx, syy)
    return descending(eig_x), descending(eig_y)


# ------------------------------------------------------------ side by side on the host

# Below this size a decomposition takes under ~20 ms and the host threads' overhead (~0.5 ms)
# outweighs the gain: at d = 128 two matrices took 5.5 ms side by side vs 4.9 ms batched, at
# d = 512 109 ms vs 145 ms, at d = 1,024 0.48 s vs 0.72 s (2 cores).
HOST_THREADS_MIN_DIM = 256

_eigh_one = jax.jit(eigh_upper, static_argnames=("symmetrize",))
_eigh_pair = jax.jit(eigh_upper_pair, static_argnames=("symmetrize",))
_lock = threading.Lock()
_host: dict = {}


def _host_workers(mats: Sequence[jax.Array]) -> int:
    """Host threads to use: one per matrix on CPU, capped by the cores this process has."""
    if len(mats) < 2 or not validation.is_concrete(*mats):
        return 1
    if min(m.shape[-1] for m in mats) < HOST_THREADS_MIN_DIM:
        return 1
    if any(dev.platform != "cpu" for m in mats for dev in m.devices()):
        return 1
    return min(len(mats), len(os.sched_getaffinity(0)))


def _blas_and_pool(workers: int):
    """The BLAS thread controller (made once LAPACK is loaded) and a thread pool."""
    with _lock:
        if "blas" not in _host:
            # jaxlib's CPU LAPACK kernels call scipy's OpenBLAS: load it before looking.
            import scipy.linalg  # noqa: F401
            from threadpoolctl import ThreadpoolController

            _host["blas"] = ThreadpoolController().select(user_api="blas")
        pool, size = _host.get("pool", (None, 0))
        if size < workers:
            pool = ThreadPoolExecutor(workers, "tfj-eigh")
            _host["pool"] = (pool, workers)
        return _host["blas"], pool


def eigh_upper_many(mats: Sequence[jax.Array], *, symmetrize: bool = True) -> list[Eig]:
    """`eigh_upper` of each matrix: ascending ``(lam (d,), vec (d, d))`` per matrix.

    With concrete CPU arrays and several cores, the decompositions run side by side, one
    host thread per matrix with the BLAS threads shared out among them, and are finished
    when this returns. Otherwise (GPU/TPU, one core, one matrix, matrices smaller than
    `HOST_THREADS_MIN_DIM`, tracers) they go through
    `eigh_upper_pair` (two matrices) or `eigh_upper`.

    Args:
      mats: square matrices ``(d_i, d_i)``.
      symmetrize: whether to decompose ``(a + a^T) / 2``; False reads the upper triangle of
        input that is already exactly symmetric.

    Returns:
      One ``(lam, vec)`` pair per matrix, in order.
    """
    workers = _host_workers(mats)
    if workers < 2:
        if len(mats) == 2:
            return list(_eigh_pair(*mats, symmetrize=symmetrize))
        return [_eigh_one(m, symmetrize=symmetrize) for m in mats]
    blas, pool = _blas_and_pool(workers)
    threads = max((lib["num_threads"] for lib in blas.info()), default=1)

    def run(a):
        return jax.block_until_ready(_eigh_one(a, symmetrize=symmetrize))

    with blas.limit(limits=max(1, threads // workers)):
        return list(pool.map(run, mats))
