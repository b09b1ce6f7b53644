"""Degenerate input: a clear error on the host, a documented value under transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfusion_jax import similarity as sim

R = np.random.default_rng(0)
X = R.standard_normal((20, 5)).astype(np.float32)
Y = R.standard_normal((20, 3)).astype(np.float32)
CONST = np.ones((20, 4), np.float32)
# Values are checked where they live: NumPy on the host, jax.Array on its device.
WHERE = {"numpy": np.asarray, "jax": jnp.asarray}

ALL = {
    "linear_cka": sim.linear_cka,
    "rbf_cka": sim.rbf_cka,
    "cca": sim.cca,
    "svcca": sim.svcca,
    "pwcca": sim.pwcca,
    "procrustes": sim.procrustes_distance,
}


@pytest.mark.parametrize("where", sorted(WHERE))
@pytest.mark.parametrize("name", sorted(ALL))
def test_constant_representation_raises(name, where):
    with pytest.raises(sim.SimilarityInputError, match="constant"):
        ALL[name](WHERE[where](CONST), WHERE[where](Y))


@pytest.mark.parametrize("where", sorted(WHERE))
@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_raise(name, bad, where):
    x = X.copy()
    x[3, 1] = bad
    with pytest.raises(sim.SimilarityInputError, match="NaN or inf"):
        ALL[name](WHERE[where](x), WHERE[where](Y))


@pytest.mark.parametrize("where", sorted(WHERE))
def test_finite_check_counts_exactly_and_survives_overflowing_sums(where):
    """The cheap pre-checks must neither miss bad values nor reject large finite ones."""
    from transfusion_jax.similarity import validation

    to = WHERE[where]
    huge = np.full((20, 5), 3e38, np.float32)  # finite, but the float32 sum overflows
    huge[::2] *= -0.5
    validation.check_representation(to(huge))  # no error: every value is finite
    cancel = X.copy()
    cancel[0, 0], cancel[1, 0] = np.inf, -np.inf  # inf - inf: a NaN sum, not an inf one
    cancel[2, 2] = np.nan
    with pytest.raises(sim.SimilarityInputError, match="contains 3 NaN or inf"):
        validation.check_representation(to(cancel))
    stack = np.stack([X, X])
    stack[1, 4, 4] = np.inf
    with pytest.raises(sim.SimilarityInputError, match="contains 1 NaN or inf"):
        validation.check_stack(to(stack))
    # One NaN in a larger stack: XLA:CPU's vectorised max/min let it through here.
    big = R.standard_normal((4, 300, 64)).astype(np.float32)
    big[1, 7, 3] = np.nan
    with pytest.raises(sim.SimilarityInputError, match="contains 1 NaN or inf"):
        validation.check_stack(to(big))


def test_mismatched_examples_and_wrong_rank_raise():
    with pytest.raises(sim.SimilarityInputError, match="same examples"):
        sim.linear_cka(X, Y[:10])
    with pytest.raises(sim.SimilarityInputError, match="reduce_conv"):
        sim.linear_cka(np.zeros((4, 2, 2, 3)), Y[:4])


def test_debiased_needs_four_examples():
    with pytest.raises(sim.SimilarityInputError, match="n-3"):
        sim.linear_cka(X[:3], Y[:3], debiased=True)
    with pytest.raises(sim.SimilarityInputError, match="n-3"):
        sim.rbf_cka(X[:3], Y[:3], debiased=True)
    assert np.isfinite(float(sim.linear_cka(X[:4], Y[:4], debiased=True)))
    with pytest.raises(sim.SimilarityInputError, match="at least 4"):
        sim.batched.linear_cka_matrix(np.ones((2, 1, 3, 2)) * np.arange(3)[:, None],
                                      debiased=True)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="keep"):
        sim.svcca(X, Y, keep=1.5)
    with pytest.raises(ValueError, match="keep"):
        sim.svcca(X, Y, keep=0)
    with pytest.raises(ValueError, match="form"):
        sim.linear_cka(X, Y, form="fast")
    with pytest.raises(ValueError, match="mean_pool"):
        sim.reduce_conv(np.zeros((2, 3, 3, 4)), "max_pool", layout="NHWC")


def test_traced_constant_gives_documented_zero_not_nan():
    """Under jit there is no host check: a zero denominator gives 0, a rank-0 CCA count 0."""
    for f in (sim.linear_cka, sim.rbf_cka):
        assert float(jax.jit(f)(CONST, Y)) == 0.0
    assert float(jax.jit(lambda a, b: sim.linear_cka(a, b, debiased=True))(CONST, Y)) == 0.0
    res = jax.jit(sim.cca)(CONST, Y)
    assert int(res.count) == 0 and float(res.mean) == 0.0
    assert float(jax.jit(sim.pwcca)(CONST, Y).mean) == 0.0
    np.testing.assert_allclose(float(jax.jit(sim.procrustes_distance)(CONST, Y)), np.sqrt(2))


def test_traced_non_finite_propagates_nan():
    """Documented: non-finite activations under jit give NaN (garbage in is not hidden)."""
    x = X.copy()
    x[0, 0] = np.nan
    assert np.isnan(float(jax.jit(sim.linear_cka)(x, Y)))


def test_conv_reductions():
    a = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5)
    assert sim.reduce_conv(a, "flatten_positions", layout="NHWC").shape == (24, 5)
    np.testing.assert_allclose(sim.reduce_conv(a, "mean_pool", layout="NHWC"),
                               a.mean(axis=(1, 2)))
    assert sim.reduce_conv(a, "flatten_all", layout="NHWC").shape == (2, 60)
    np.testing.assert_array_equal(sim.flatten_positions(a)[4], a[0, 1, 0])
    assert sim.reduce_conv(X, "mean_pool").shape == X.shape
