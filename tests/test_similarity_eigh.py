"""Side-by-side eigendecompositions: same values as one at a time, BLAS threads restored."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg  # noqa: F401  (loads the OpenBLAS that jax's CPU LAPACK calls)
from threadpoolctl import threadpool_info

from tests.conftest import equations
from transfusion_jax import similarity as sim
from transfusion_jax.similarity import eigh as eigh_lib


def _spd(d, seed):
    a = np.random.default_rng(seed).standard_normal((3 * d, d))
    return a.T @ a


def _blas_threads():
    return sorted((i["filepath"], i["num_threads"]) for i in threadpool_info()
                  if i["user_api"] == "blas")


def _side_by_side(count):
    """Host threads expected for ``count`` large concrete matrices: on CPU one per matrix
    (capped by the cores), on an accelerator none (its solver runs them in one call)."""
    if jax.default_backend() != "cpu":
        return 1
    return min(count, len(os.sched_getaffinity(0)))


def _check(mats, got):
    assert len(got) == len(mats)
    for m, (lam, vec) in zip(mats, got, strict=True):
        lam, vec, m = np.asarray(lam), np.asarray(vec), np.asarray(m)
        np.testing.assert_allclose(lam, np.linalg.eigvalsh(m), rtol=1e-10, atol=1e-9)
        assert np.all(np.diff(lam) >= 0)  # ascending
        np.testing.assert_allclose(m @ vec, vec * lam[None, :], atol=1e-8)


@pytest.fixture
def small_threshold(monkeypatch):
    """Small matrices take the side-by-side path too (it is used from d = 256 on)."""
    monkeypatch.setattr(eigh_lib, "HOST_THREADS_MIN_DIM", 8)


@pytest.mark.parametrize("dims", [(24, 24), (24, 17), (9, 9, 12)])
def test_many_match_reference_and_restore_blas_threads(x64, small_threshold, dims):
    mats = [jnp.asarray(_spd(d, s)) for s, d in enumerate(dims)]
    assert eigh_lib._host_workers(mats) == _side_by_side(len(dims))
    before = _blas_threads()
    _check(mats, eigh_lib.eigh_upper_many(mats, symmetrize=False))
    assert _blas_threads() == before


def test_small_matrices_stay_in_one_call(x64):
    mats = [jnp.asarray(_spd(16, s)) for s in range(2)]
    assert eigh_lib._host_workers(mats) == 1
    _check(mats, eigh_lib.eigh_upper_many(mats))


def test_many_reads_upper_triangle_only_without_symmetrize(x64, small_threshold):
    m = _spd(10, 3)
    skewed = m + np.tril(np.ones_like(m), -1)  # garbage below the diagonal
    got = eigh_lib.eigh_upper_many([jnp.asarray(skewed), jnp.asarray(m)], symmetrize=False)
    _check([m, m], got)


def test_many_under_jit_uses_the_graph_path(x64, small_threshold):
    mats = [jnp.asarray(_spd(8, s)) for s in range(2)]

    @jax.jit
    def f(a, b):
        assert eigh_lib._host_workers([a, b]) == 1
        return eigh_lib.eigh_upper_many([a, b])

    _check(mats, f(*mats))


@pytest.mark.parametrize("name", ["cca", "pwcca", "svcca"])
def test_front_ends_side_by_side_equal_the_traced_graph(x64, name):
    # d >= HOST_THREADS_MIN_DIM: concrete calls decompose on host threads, traced ones in graph.
    r = np.random.default_rng(5)
    x = r.standard_normal((600, 256)) * (1.0 / np.arange(1, 257)) ** 0.5
    y = x[:, :200] @ r.standard_normal((200, 260)) + 0.5 * r.standard_normal((600, 260))
    fn = {"cca": sim.cca, "pwcca": sim.pwcca, "svcca": lambda a, b: sim.svcca(a, b, keep=0.9)}
    assert eigh_lib._host_workers([jnp.zeros((256, 256)), jnp.zeros((260, 260))]) == (
        _side_by_side(2))
    got, want = fn[name](x, y), jax.jit(fn[name])(x, y)
    np.testing.assert_allclose(float(got.mean), float(want.mean), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(got.rhos), np.asarray(want.rhos), atol=1e-9)


def _eigh_operand_ranks(fn, *args) -> list[int]:
    """The rank of every ``eigh`` operand in ``fn``'s program (sub-programs included)."""
    return [e.invars[0].aval.ndim for e in equations(jax.make_jaxpr(fn)(*args).jaxpr)
            if e.primitive.name == "eigh"]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU LAPACK path")
def test_no_batched_decomposition_in_graph_on_cpu():
    """jaxlib's batched CPU ``eigh`` blocks on its own thread pool, so two of them in one
    program can deadlock (module docstring): on CPU every in-graph ``eigh`` is one matrix."""
    a, b = jnp.asarray(_spd(6, 0)), jnp.asarray(_spd(6, 1))
    ranks = _eigh_operand_ranks(eigh_lib.eigh_descending_pair, a, b)
    ranks += _eigh_operand_ranks(eigh_lib.eigh_descending_many, jnp.stack([a, b, a]))
    assert ranks and set(ranks) == {2}
    lam, vec = eigh_lib.eigh_descending_many(jnp.stack([a, b]))
    for m, lm, vm in zip((a, b), lam, vec, strict=True):
        np.testing.assert_allclose(np.asarray(lm), np.linalg.eigvalsh(np.asarray(m))[::-1],
                                   rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(np.asarray(m @ vm), np.asarray(vm * lm[None]), atol=1e-2)


EIGHT_PAIRS = """
import jax, jax.numpy as jnp, numpy as np
from transfusion_jax.similarity import eigh as eigh_lib
rng = np.random.default_rng(0)
xs = [jnp.asarray(rng.standard_normal((200 + 16 * i, 300)), jnp.float32) for i in range(8)]
f = jax.jit(lambda xs: [eigh_lib.eigh_descending_pair(x @ x.T, x @ x.T + 1) for x in xs])
for i in range(15):
    jax.block_until_ready(f([x + i for x in xs]))
print("done")
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU LAPACK path")
def test_many_pairs_in_one_program_finish():
    """The program that hung with batched pairs (8 pairs of 200-312 wide matrices, 15 calls
    on 2 threads) finishes; run in a subprocess so that a deadlock fails instead of hanging."""
    import subprocess
    import sys

    from tests.conftest import ROOT, cli_env

    proc = subprocess.run([sys.executable, "-c", EIGHT_PAIRS], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-2000:]
