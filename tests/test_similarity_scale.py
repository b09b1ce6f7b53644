"""Every estimator form and accumulator gives the same numbers at input scales 1e-6 to 1e6.

Similarity values are invariant to scaling the activations; float arithmetic is not (fourth
powers of activations overflow float32 near a scale of 100-1,000 and underflow near 1e-5).
Each form is run on the same ReLU-like representations multiplied by each scale, in float32
(and float64), and must give the float64 value of the unscaled data: CKA(x, x) = 1,
invariance to scale, translation and rotation, agreement with float64.
"""

from functools import partial

import jax
import numpy as np
import pytest
from scipy.stats import ortho_group

from tests import similarity_reference as ref
from transfusion_jax import similarity as sim
from transfusion_jax.similarity import minibatch, streaming

SCALES = [1e-6, 1e-3, 1.0, 1e3, 1e6]
F32_TOL = {"cka": 3e-5, "cca": 2e-4}


def _pair(n=64, dx=6, dy=9, seed=0):
    r = np.random.default_rng(seed)
    z = r.standard_normal((n, 4))
    x = np.maximum(z @ r.standard_normal((4, dx)) + 0.7 * r.standard_normal((n, dx)) + 0.4, 0)
    y = np.maximum(z @ r.standard_normal((4, dy)) + 0.7 * r.standard_normal((n, dy)) + 0.2, 0)
    return x, y


def _stream(x, y, fn, debiased=True, batches=(20, 1, 43)):
    acts = [x[None], y[None]]
    spec = streaming.StreamSpec.create(acts, pairs=[(0, 1), (0, 0)], debiased=debiased)
    stats, start = streaming.init(spec, [a[:, :batches[0]] for a in acts]), 0
    for b in batches:
        stats = streaming.update(stats, [a[:, start:start + b] for a in acts], spec=spec)
        start += b
    return fn(stats, spec)


def _minibatch(x, y, kernel):
    acts = [x[None], y[None]]
    stats = minibatch.init(sim.layout_of(acts), x.dtype)
    for s in (slice(0, 32), slice(32, 64)):
        stats = minibatch.update(stats, [a[:, s] for a in acts], kernel=kernel)
    m = minibatch.cka(stats)
    return [m[0, 1], m[0, 0]]


def _both(f):
    """``f(x, y)`` and ``f(x, x)``."""
    return lambda x, y: [f(x, y), f(x, x)]


def _streamed(read, debiased=True):
    return lambda x, y: _stream(x, y, read, debiased=debiased)


def _pwcca_def(x, y):
    return sim.pwcca(x, y, convention="definition").mean


def _procrustes_similarity(x, y):
    """``1 - d^2 / 2 = ||X^T Y||_* / (||X|| ||Y||)``: d itself resolves only sqrt(eps) near 0."""
    return 1.0 - sim.procrustes_distance(x, y, squared=True) / 2


LIN, DEB = "linear_cka", "linear_cka debiased"
# name -> (kind, reference, f(x, y) -> (value of the pair, value of x with itself))
FORMS = {
    "linear_cka feature": ("cka", LIN, _both(partial(sim.linear_cka, form="feature"))),
    "linear_cka gram": ("cka", LIN, _both(partial(sim.linear_cka, form="gram"))),
    "linear_cka debiased feature": ("cka", DEB, _both(partial(sim.linear_cka, debiased=True,
                                                              form="feature"))),
    "linear_cka debiased gram": ("cka", DEB, _both(partial(sim.linear_cka, debiased=True,
                                                           form="gram"))),
    "rbf_cka": ("cka", "rbf_cka", _both(sim.rbf_cka)),
    "rbf_cka debiased": ("cka", "rbf_cka debiased", _both(partial(sim.rbf_cka, debiased=True))),
    "cka_from_grams": ("cka", LIN, _both(lambda x, y: sim.cka_from_grams(sim.gram_linear(x),
                                                                         sim.gram_linear(y)))),
    "linear_cka_matrix gram": ("cka", LIN, lambda x, y: _matrix(x, y, form="gram")),
    "linear_cka_matrix feature": ("cka", LIN, lambda x, y: _matrix(x, y, form="feature")),
    "linear_cka_matrix debiased gram": ("cka", DEB, lambda x, y: _matrix(x, y, form="gram",
                                                                         debiased=True)),
    "linear_cka_pairs debiased": ("cka", DEB, lambda x, y: sim.linear_cka_pairs(
        [x[None], y[None]], [(0, 1), (0, 0)], debiased=True)),
    "streaming linear_cka": ("cka", LIN, _streamed(
        lambda st, sp: streaming.linear_cka(st, spec=sp))),
    "streaming linear_cka debiased": ("cka", DEB, _streamed(
        lambda st, sp: streaming.linear_cka(st, spec=sp, debiased=True))),
    "minibatch linear": ("cka", "minibatch linear", lambda x, y: _minibatch(x, y, "linear")),
    "minibatch rbf": ("cka", "minibatch rbf", lambda x, y: _minibatch(x, y, "rbf")),
    "cca": ("cca", "cca", _both(lambda x, y: sim.cca(x, y).mean)),
    "svcca": ("cca", "svcca", _both(lambda x, y: sim.svcca(x, y, keep=0.95).mean)),
    "pwcca released": ("cca", "pwcca released", _both(lambda x, y: sim.pwcca(x, y).mean)),
    "pwcca definition": ("cca", "pwcca definition", _both(_pwcca_def)),
    "cca_pairs pwcca": ("cca", "pwcca released", lambda x, y: sim.cca_pairs(
        [x[None], y[None]], [(0, 1), (0, 0)], method="pwcca")),
    "streaming svcca": ("cca", "svcca", _streamed(lambda st, sp: streaming.cca_similarity(
        st, spec=sp, method="svcca", keep=0.95), debiased=False)),
    "streaming pwcca": ("cca", "pwcca released", _streamed(lambda st, sp: streaming.cca_similarity(
        st, spec=sp, method="pwcca"), debiased=False)),
    "procrustes": ("cca", "procrustes", _both(_procrustes_similarity)),
}


def _matrix(x, y, **kw):
    m = sim.linear_cka_matrix([x[None], y[None]], **kw)
    return [m[0, 1], m[0, 0]]


def _minibatch_ref(x, y, kernel):
    halves = (slice(0, 32), slice(32, 64))
    return ref.minibatch_cka([x[s] for s in halves], [y[s] for s in halves], kernel)


# name -> the float64 NumPy reference (`similarity_reference`) of the unscaled pair.
REFERENCES = {
    "linear_cka": lambda x, y: ref.linear_cka(x, y),
    "linear_cka debiased": lambda x, y: ref.linear_cka(x, y, debiased=True),
    "rbf_cka": lambda x, y: ref.cka(ref.gram_rbf(x, 0.8), ref.gram_rbf(y, 0.8)),
    "rbf_cka debiased": lambda x, y: ref.cka(ref.gram_rbf(x, 0.8), ref.gram_rbf(y, 0.8), True),
    "minibatch linear": lambda x, y: _minibatch_ref(x, y, "linear"),
    "minibatch rbf": lambda x, y: _minibatch_ref(x, y, "rbf"),
    "cca": lambda x, y: float(np.mean(ref.cca(x, y))),
    "svcca": lambda x, y: float(np.mean(ref.svcca(x, y, 0.95))),
    "pwcca released": lambda x, y: ref.released_pwcca(x, y)[0],
    "pwcca definition": lambda x, y: ref.pwcca(x, y)[0],
    "procrustes": lambda x, y: 1.0 - ref.procrustes(x, y) ** 2 / 2,
}


@pytest.fixture(scope="module")
def want():
    """Every form's float64 reference value on the unscaled data."""
    x, y = _pair()
    return {name: REFERENCES[reference](x, y) for name, (_, reference, _) in FORMS.items()}


@pytest.mark.parametrize("name", sorted(FORMS))
def test_float32_same_value_at_every_scale(want, name):
    kind, _, fn = FORMS[name]
    x, y = _pair()
    for scale in SCALES:
        got = [float(v) for v in fn((x * scale).astype(np.float32),
                                    (y * scale).astype(np.float32))]
        assert np.isfinite(got).all(), (name, scale, got)
        assert got[1] == pytest.approx(1.0, abs=F32_TOL[kind]), (name, scale, "self")
        assert got[0] == pytest.approx(want[name], abs=F32_TOL[kind]), (name, scale)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FORMS))
def test_float64_same_value_at_every_scale(x64, want, name):
    _, _, fn = FORMS[name]
    x, y = _pair()
    for scale in SCALES:
        got = [float(v) for v in fn(x * scale, y * scale)]
        assert got[1] == pytest.approx(1.0, abs=1e-9), (name, scale, "self")
        assert got[0] == pytest.approx(want[name], abs=1e-8), (name, scale)


def test_issue_case_self_cka_of_large_activations_is_one():
    """n = 1,000, d = 512, standard deviation ~300, float32: self-CKA came out 0."""
    r = np.random.default_rng(0)
    x = (300.0 * np.maximum(r.standard_normal((1000, 512)) + 0.5, 0)).astype(np.float32)
    assert float(sim.linear_cka(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(sim.linear_cka(x, x, debiased=True)) == pytest.approx(1.0, abs=1e-6)
    acts = np.stack([x[None], (2 * x)[None]])  # (C=2, L=1, n, d)
    np.testing.assert_allclose(np.asarray(sim.linear_cka_matrix(acts)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sim.linear_cka_matrix(acts, form="gram")), 1.0,
                               atol=1e-6)
    spec = streaming.StreamSpec.create(acts)
    stats = streaming.init(spec, acts[:, :, :250])
    for s in range(0, 1000, 250):
        stats = streaming.update(stats, acts[:, :, s:s + 250], spec=spec)
    for debiased in (False, True):
        np.testing.assert_allclose(
            np.asarray(streaming.linear_cka(stats, spec=spec, debiased=debiased)), 1.0,
            atol=1e-6)


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_invariances_hold_at_extreme_scales(scale):
    """Rotation, isotropic scaling and translation at float32's awkward ends."""
    x, y = _pair(dx=6, dy=6, seed=3)
    with jax.enable_x64(True):
        base = ref.linear_cka(x, y)
        base_cca = float(sim.cca(x, y).mean)
    q = ortho_group.rvs(6, random_state=4)
    moved = ((3.7 * x @ q + 2.0) * scale).astype(np.float32)
    ys = (y * scale).astype(np.float32)
    assert float(sim.linear_cka(moved, ys)) == pytest.approx(base, abs=3e-5)
    assert float(sim.linear_cka(moved, ys, form="gram")) == pytest.approx(base, abs=3e-5)
    assert float(sim.cca(moved, ys).mean) == pytest.approx(base_cca, abs=2e-4)
