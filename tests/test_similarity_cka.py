"""CKA: agreement with float64 references and the invariances of Kornblith et al. 2019."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import ortho_group

from tests import similarity_reference as ref
from transfusion_jax import similarity as sim

F32_TOL = 2e-5  # documented float32 tolerance for CKA on well-conditioned data


def _pair(n=40, dx=7, dy=5, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, dx))
    y = np.tanh(x @ r.standard_normal((dx, dy))) + 0.5 * r.standard_normal((n, dy))
    return x, y


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", [(40, 7, 5), (12, 30, 25)])  # feature form, Gram form
def test_linear_cka_matches_reference_float64(x64, debiased, shape):
    x, y = _pair(*shape)
    want = ref.linear_cka(x, y, debiased)
    for form in ("auto", "feature", "gram"):
        got = sim.linear_cka(x, y, debiased=debiased, form=form)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(float(got), want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_cka_matches_reference_float64(x64, debiased):
    x, y = _pair(30, 6, 4, seed=1)
    for frac in (0.4, 0.8):
        want = ref.cka(ref.gram_rbf(x, frac), ref.gram_rbf(y, frac), debiased)
        got = sim.rbf_cka(x, y, sigma_frac=frac, debiased=debiased)
        np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_linear_cka_float32_within_documented_tolerance():
    x, y = _pair(200, 32, 16, seed=2)
    want = ref.linear_cka(x, y)
    got = sim.linear_cka(x.astype(np.float32), y.astype(np.float32))
    assert got.dtype == jnp.float32
    assert abs(float(got) - want) < F32_TOL


def test_cka_of_itself_is_one_and_symmetric(x64):
    x, y = _pair()
    for debiased in (False, True):
        np.testing.assert_allclose(float(sim.linear_cka(x, x, debiased=debiased)), 1.0, rtol=1e-12)
        np.testing.assert_allclose(float(sim.rbf_cka(x, x, debiased=debiased)), 1.0, rtol=1e-12)
        np.testing.assert_allclose(float(sim.linear_cka(x, y, debiased=debiased)),
                                   float(sim.linear_cka(y, x, debiased=debiased)), rtol=1e-12)


def test_invariant_to_orthogonal_maps_and_isotropic_scaling_not_to_linear_maps(x64):
    x, y = _pair(50, 6, 6)
    base = float(sim.linear_cka(x, y))
    q = ortho_group.rvs(6, random_state=3)
    moved = 3.7 * x @ q + 2.0  # rotation, isotropic scale, translation
    np.testing.assert_allclose(float(sim.linear_cka(moved, y)), base, rtol=1e-10)
    np.testing.assert_allclose(float(sim.rbf_cka(moved, y)), float(sim.rbf_cka(x, y)),
                               rtol=1e-10)
    stretch = x @ np.diag([10.0, 1, 1, 0.1, 1, 1])  # an invertible, non-orthogonal map
    assert abs(float(sim.linear_cka(stretch, y)) - base) > 1e-2


def test_feature_and_gram_forms_agree_in_float32():
    x, y = _pair(64, 48, 40, seed=4)
    x, y = x.astype(np.float32), y.astype(np.float32)
    for debiased in (False, True):
        a = sim.linear_cka(x, y, debiased=debiased, form="feature")
        b = sim.linear_cka(x, y, debiased=debiased, form="gram")
        np.testing.assert_allclose(float(a), float(b), rtol=1e-5)


def test_gram_helpers_match_reference(x64):
    x, _ = _pair(20, 5, 3)
    np.testing.assert_allclose(sim.gram_rbf(x, 0.8), ref.gram_rbf(x, 0.8), rtol=1e-10)
    k = ref.gram_linear(x)
    l = ref.gram_rbf(x, 0.5)  # noqa: E741
    np.testing.assert_allclose(float(sim.cka_from_grams(k, l, debiased=True)),
                               ref.cka(k, l, True), rtol=1e-8)


def test_jit_and_vmap_over_a_stack():
    r = np.random.default_rng(5)
    xs = r.standard_normal((4, 30, 6)).astype(np.float32)
    ys = r.standard_normal((4, 30, 3)).astype(np.float32)
    batched = jax.vmap(lambda a, b: sim.linear_cka(a, b, debiased=True))(xs, ys)
    looped = [float(sim.linear_cka(a, b, debiased=True)) for a, b in zip(xs, ys, strict=True)]
    np.testing.assert_allclose(batched, looped, rtol=1e-5)
    jitted = jax.jit(lambda a, b: sim.rbf_cka(a, b))(xs[0], ys[0])
    np.testing.assert_allclose(float(jitted), float(sim.rbf_cka(xs[0], ys[0])), rtol=1e-6)
