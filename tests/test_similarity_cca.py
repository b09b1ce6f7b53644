"""CCA, SVCCA, PWCCA and Procrustes against float64 references, and their invariances."""

import jax
import numpy as np
import pytest

from tests import similarity_reference as ref
from transfusion_jax import similarity as sim


def _pair(n=60, dx=6, dy=4, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, dx))
    y = x[:, :dy] @ r.standard_normal((dy, dy)) + 0.7 * r.standard_normal((n, dy))
    return x, y


def test_cca_matches_reference_float64(x64):
    x, y = _pair()
    got = sim.cca(x, y)
    want = ref.cca(x, y)
    np.testing.assert_allclose(np.asarray(got.rhos), want, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(float(got.mean), want.mean(), rtol=1e-6)
    assert int(got.count) == 4


def test_cca_invariant_to_invertible_linear_maps(x64):
    x, y = _pair(seed=1)
    r = np.random.default_rng(2)
    a = r.standard_normal((6, 6)) + 3 * np.eye(6)
    b = r.standard_normal((4, 4)) + 3 * np.eye(4)
    base = sim.cca(x, y)
    moved = sim.cca(x @ a + 5.0, y @ b - 1.0)
    np.testing.assert_allclose(np.asarray(moved.rhos), np.asarray(base.rhos), atol=1e-9)


@pytest.mark.parametrize("keep", [0.99, 0.8, 3])
def test_svcca_matches_reference_float64(x64, keep):
    r = np.random.default_rng(3)
    # Decaying spectra so that the variance cut keeps a strict subset.
    x = r.standard_normal((80, 10)) * (0.7 ** np.arange(10))
    y = x @ r.standard_normal((10, 8)) * 0.5 + r.standard_normal((80, 8)) * (0.6 ** np.arange(8))
    got = sim.svcca(x, y, keep=keep)
    want = ref.svcca(x, y, keep)
    k = len(want)
    assert int(got.count) == k
    np.testing.assert_allclose(np.asarray(got.rhos[:k]), want, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(float(got.mean), want.mean(), rtol=1e-6)
    # The traced (masked, full-size) path gives the same value as the sliced host path.
    traced = jax.jit(lambda a, b: sim.svcca(a, b, keep=keep))(x, y)
    np.testing.assert_allclose(float(traced.mean), float(got.mean), rtol=1e-10)


@pytest.mark.parametrize("swap", [False, True])
def test_pwcca_definition_matches_reference_float64(x64, swap):
    x, y = _pair(70, 7, 4, seed=4)
    if swap:
        x, y = y, x
    got = sim.pwcca(x, y, convention="definition")
    want, rhos, alpha = ref.pwcca(x, y)
    np.testing.assert_allclose(np.asarray(got.weights), alpha, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(got.rhos), rhos, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(float(got.mean), want, rtol=1e-6)
    np.testing.assert_allclose(float(np.sum(got.weights)), 1.0, rtol=1e-12)


def test_cca_float32_within_documented_tolerance():
    x, y = _pair(500, 16, 12, seed=5)
    want = ref.cca(x, y)
    got = sim.cca(x.astype(np.float32), y.astype(np.float32))
    np.testing.assert_allclose(np.asarray(got.rhos), want, atol=1e-4)
    got = sim.pwcca(x.astype(np.float32), y.astype(np.float32), convention="definition")
    np.testing.assert_allclose(float(got.mean), ref.pwcca(x, y)[0], atol=1e-4)
    got = sim.pwcca(x.astype(np.float32), y.astype(np.float32))
    np.testing.assert_allclose(float(got.mean), ref.released_pwcca(x, y)[0], atol=1e-4)


def test_rank_deficient_input_gives_column_space_cca(x64):
    """Duplicated and constant features and n < d: CCA of the column spaces, no NaN."""
    x, y = _pair(50, 5, 4, seed=6)
    x_dup = np.concatenate([x, x[:, :2], np.ones((50, 1))], axis=1)  # rank 5 of 8 columns
    got = sim.cca(x_dup, y)
    assert int(got.count) == 4
    np.testing.assert_allclose(np.asarray(got.rhos[:4]), ref.cca(x, y), atol=1e-8)
    assert np.all(np.asarray(got.rhos[4:]) == 0)
    for convention in ("released", "definition"):
        pw = sim.pwcca(x_dup, y, convention=convention)
        assert np.isfinite(float(pw.mean))
        np.testing.assert_allclose(float(np.sum(pw.weights)), 1.0, rtol=1e-12)
    # n < d: 10 examples, 20 features each -> spans coincide, every correlation is 1.
    r = np.random.default_rng(7)
    small = sim.cca(r.standard_normal((10, 20)), r.standard_normal((10, 20)))
    assert int(small.count) == 9
    np.testing.assert_allclose(np.asarray(small.rhos[:9]), 1.0, atol=1e-8)


def test_vmappable_from_covariances():
    r = np.random.default_rng(8)
    xs = r.standard_normal((3, 40, 5)).astype(np.float32)
    ys = r.standard_normal((3, 40, 5)).astype(np.float32)
    out = jax.vmap(lambda a, b: sim.svcca(a, b, keep=0.9).mean)(xs, ys)
    loop = [float(sim.svcca(a, b, keep=0.9).mean) for a, b in zip(xs, ys, strict=True)]
    np.testing.assert_allclose(out, loop, rtol=1e-4)


def test_procrustes_matches_reference_and_invariances(x64):
    x, y = _pair(40, 6, 4, seed=9)
    np.testing.assert_allclose(float(sim.procrustes_distance(x, y)), ref.procrustes(x, y),
                               rtol=1e-8)
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((6, 6)))
    assert float(sim.procrustes_distance(x, 2.5 * x @ q + 1.0)) < 1e-6
    sq = float(sim.procrustes_distance(x, y, squared=True))
    np.testing.assert_allclose(sq, ref.procrustes(x, y) ** 2, rtol=1e-8)


def test_blocked_gram_is_exact_and_symmetric(x64):
    from transfusion_jax.similarity import cca_core

    a = np.random.default_rng(10).standard_normal((50, 23))
    got = np.asarray(cca_core.gram(a, block=5))  # 5 row strips, the last one partial
    np.testing.assert_allclose(got, a.T @ a, rtol=1e-12, atol=1e-12)
    assert np.array_equal(got, got.T)


def test_svcca_pwcca_wider_than_gram_block_match_reference(x64):
    # d > GRAM_BLOCK exercises the strip-wise covariance used on real layer widths.
    # Distinct canonical correlations, so PWCCA's canonical directions are well defined.
    r = np.random.default_rng(11)
    x = r.standard_normal((2000, 530)) * (0.99 ** np.arange(530))
    y = x[:, :520] * np.linspace(0.05, 3.0, 520) + r.standard_normal((2000, 520))
    got, want = sim.svcca(x, y, keep=0.9), ref.svcca(x, y, 0.9)
    np.testing.assert_allclose(float(got.mean), want.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(sim.pwcca(x, y, convention="definition").mean),
                               ref.pwcca(x, y)[0], rtol=1e-6)
    np.testing.assert_allclose(float(sim.pwcca(x, y).mean), ref.released_pwcca(x, y)[0],
                               rtol=1e-6)
