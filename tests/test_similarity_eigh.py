"""Side-by-side eigendecompositions: same values as one at a time, BLAS threads restored."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg  # noqa: F401  (loads the OpenBLAS that jax's CPU LAPACK calls)
from threadpoolctl import threadpool_info

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
