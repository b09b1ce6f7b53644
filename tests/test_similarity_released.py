"""PWCCA and SVCCA against the authors' released conventions (google/svcca), on ReLU data.

The references (`similarity_reference.released_pwcca`, `released_svcca`) re-state the
released arithmetic on (examples, neurons) arrays; 0.7948933782955907 is what google/svcca's
``pwcca.compute_pwcca`` itself returns on issue 15's case (epsilon 0).
"""

import jax
import numpy as np
import pytest

from tests import similarity_reference as ref
from transfusion_jax import similarity as sim
from transfusion_jax.similarity import streaming

RELEASED_ISSUE_CASE = 0.7948933782955907  # google/svcca compute_pwcca(x.T, y.T)
DEFINITION_ISSUE_CASE = 0.7833304380686751  # this project's pwcca before the change


def _relu(n, dx, dy, seed, shift=(0.3, -0.2)):
    r = np.random.default_rng(seed)
    z = r.standard_normal((n, 5))
    x = np.maximum(z @ r.standard_normal((5, dx)) + 0.6 * r.standard_normal((n, dx))
                   + shift[0], 0)
    y = np.maximum(z @ r.standard_normal((5, dy)) + 0.6 * r.standard_normal((n, dy))
                   + shift[1], 0)
    return x, y


def test_issue_case_reproduces_released_value_in_both_orders(x64):
    x, y = ref.relu_case()
    assert ref.released_pwcca(x, y)[0] == pytest.approx(RELEASED_ISSUE_CASE, abs=1e-12)
    # x has 10 neurons, y 16: the released first branch; (y, x) is the branch that raised
    # IndexError there, mirrored here.
    assert float(sim.pwcca(x, y).mean) == pytest.approx(RELEASED_ISSUE_CASE, abs=1e-9)
    assert float(sim.pwcca(y, x).mean) == pytest.approx(RELEASED_ISSUE_CASE, abs=1e-9)
    assert ref.released_pwcca(y, x)[0] == pytest.approx(RELEASED_ISSUE_CASE, abs=1e-12)
    definition = sim.pwcca(x, y, convention="definition")
    assert float(definition.mean) == pytest.approx(DEFINITION_ISSUE_CASE, abs=1e-9)
    assert float(definition.mean) == pytest.approx(ref.pwcca(x, y)[0], abs=1e-9)


def test_cca_agrees_with_released_coefficients(x64):
    x, y = ref.relu_case()
    want = ref.released_cca(x, y)
    got = sim.cca(x, y)
    np.testing.assert_allclose(np.asarray(got.rhos), want, atol=1e-9)
    assert float(sim.cca(y, x).mean) == pytest.approx(float(np.mean(want)), abs=1e-9)


@pytest.mark.parametrize("shape", [(300, 6, 9), (300, 9, 6), (250, 7, 7), (500, 24, 40)])
@pytest.mark.parametrize("seed", [0, 1])
def test_released_pwcca_matches_reference_float64(x64, shape, seed):
    n, dx, dy = shape
    x, y = _relu(n, dx, dy, seed)
    want, rhos, weights = ref.released_pwcca(x, y)
    got = sim.pwcca(x, y)
    assert float(got.mean) == pytest.approx(want, abs=1e-6)
    np.testing.assert_allclose(np.asarray(got.weights), weights, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.rhos), rhos, atol=1e-6)
    if dx != dy:  # with distinct widths the side and so the value do not depend on order
        assert float(sim.pwcca(y, x).mean) == pytest.approx(want, abs=1e-6)


def test_released_pwcca_traced_vmapped_and_float32(x64):
    x, y = _relu(300, 6, 9, 4)
    want = ref.released_pwcca(x, y)[0]
    jitted = jax.jit(lambda a, b: sim.pwcca(a, b).mean)
    assert float(jitted(x, y)) == pytest.approx(want, abs=1e-9)
    xs, ys = np.stack([x, x[::-1]]), np.stack([y, y[::-1]])  # a permutation of examples
    both = jax.vmap(lambda a, b: sim.pwcca(a, b).mean)(xs, ys)
    np.testing.assert_allclose(np.asarray(both), want, atol=1e-9)
    with jax.enable_x64(False):
        got = sim.pwcca(x.astype(np.float32), y.astype(np.float32))
        assert got.mean.dtype == np.float32
        assert float(got.mean) == pytest.approx(want, abs=2e-5)


# The released convention's batched and streamed forms are checked against the in-memory one
# in test_similarity_batched and test_similarity_streaming (it is the default there).
@pytest.mark.parametrize("convention", ["definition"])
def test_batched_and_streamed_pwcca_equal_in_memory(x64, convention):
    r = np.random.default_rng(5)
    x, y = _relu(120, 5, 8, 5)
    acts = [np.stack([x, x + 0.1 * r.standard_normal(x.shape)]),
            np.stack([y, np.abs(y - 0.05 * r.standard_normal(y.shape))])]
    pairs = np.array([[0, 1], [1, 0], [0, 2], [3, 1]])  # widths 5-8, 8-5, 5-5, 8-8
    items = [acts[0][0], acts[1][0], acts[0][1], acts[1][1]]
    want = [float(sim.pwcca(items[i], items[j], convention=convention).mean) for i, j in pairs]
    got = sim.cca_pairs(acts, pairs, method="pwcca", convention=convention)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-9)
    spec = streaming.StreamSpec.create([a[:, :1] for a in acts], pairs=pairs, debiased=False)
    stats = streaming.init(spec, [a[:, :30] for a in acts])
    for s in (slice(0, 30), slice(30, 31), slice(31, 120)):
        stats = streaming.update(stats, [a[:, s] for a in acts], spec=spec)
    got = streaming.cca_similarity(stats, spec=spec, method="pwcca", convention=convention)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-9)


@pytest.mark.parametrize("keep", [5, 0.99, 0.9])
def test_svcca_matches_released_tutorial_recipe(x64, keep):
    """Keep by variance of the centred data (the tutorial's SVD of mean-subtracted neurons),
    then CCA: the same on non-centred data, in both argument orders."""
    x, y = ref.relu_case()
    want = ref.released_svcca(x, y, keep)
    assert float(sim.svcca(x, y, keep=keep).mean) == pytest.approx(want, abs=1e-8)
    assert float(sim.svcca(y, x, keep=keep).mean) == pytest.approx(want, abs=1e-8)
    assert ref.released_svcca(y, x, keep) == pytest.approx(want, abs=1e-10)


def test_released_convention_needs_means():
    cov = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="mean_x, mean_y and n"):
        sim.pwcca_from_cov(cov, cov, cov)
    res = sim.pwcca_from_cov(cov, cov, 0.5 * cov, convention="definition")
    assert float(res.mean) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="convention"):
        sim.pwcca(np.eye(4), np.eye(4), convention="paper")
