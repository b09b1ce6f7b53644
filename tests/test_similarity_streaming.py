"""Streaming accumulators equal the in-memory results; compensated sums do not drift."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import similarity_reference as ref
from transfusion_jax import similarity as sim
from transfusion_jax.similarity import compensated, minibatch, streaming, validation


def _acts(c=2, n=48, widths=(5, 3), seed=0, offset=0.0):
    r = np.random.default_rng(seed)
    base = r.standard_normal((n, 6))
    return [
        np.stack([np.tanh(base @ r.standard_normal((6, w))) + 0.3 * r.standard_normal((n, w))
                  + offset for _ in range(c)])
        for w in widths
    ]


def _stream(acts, spec, sizes):
    first = [a[:, : sizes[0]] for a in acts]
    stats = streaming.init(spec, first)
    start = 0
    for b in sizes:
        stats = streaming.update(stats, [a[:, start:start + b] for a in acts], spec=spec)
        start += b
    return stats


@pytest.mark.parametrize("debiased", [False, True])
def test_streamed_linear_cka_equals_in_memory(x64, debiased):
    acts = _acts(offset=5.0)  # a large mean: the shift keeps the raw moments well scaled
    spec = streaming.StreamSpec.create([a[:, :1] for a in acts], debiased=True)
    stats = _stream(acts, spec, [7, 20, 1, 20])  # uneven batches, one of a single example
    got = streaming.linear_cka(stats, spec=spec, debiased=debiased)
    want = sim.batched.linear_cka_pairs(acts, np.asarray(spec.pairs), debiased=debiased)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    i, j = spec.pairs[5]
    layout = sim.layout_of(acts)
    xi = acts[i % layout.num_layers][i // layout.num_layers]
    xj = acts[j % layout.num_layers][j // layout.num_layers]
    np.testing.assert_allclose(float(got[5]), ref.linear_cka(xi, xj, debiased), rtol=1e-8)


@pytest.mark.parametrize("method", ["cca", "svcca", "pwcca"])
def test_streamed_cca_family_equals_in_memory(x64, method):
    acts = _acts(c=2, widths=(4, 4), seed=1, offset=-3.0)
    pairs = sim.reference_pairs(2, 2)
    spec = streaming.StreamSpec.create([a[:, :1] for a in acts], pairs=pairs, debiased=False)
    stats = _stream(acts, spec, [10, 38])
    got = streaming.cca_similarity(stats, spec=spec, method=method, keep=0.95)
    want = sim.cca_pairs(acts, pairs, method=method, keep=0.95)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
    sxx, syy, sxy = streaming.covariance_blocks(stats, spec=spec, pair=1)
    i, j = spec.pairs[1]
    full = np.concatenate([acts[i % 2][i // 2], acts[j % 2][j // 2]], axis=1)
    cov = np.cov(full, rowvar=False)
    np.testing.assert_allclose(sxy, cov[:4, 4:], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sxx, cov[:4, :4], rtol=1e-9, atol=1e-12)


def test_streamed_float32_large_offset_within_tolerance():
    acts = [a.astype(np.float32) for a in _acts(n=64, offset=100.0, seed=2)]
    spec = streaming.StreamSpec.create([a[:, :1] for a in acts], debiased=True)
    stats = _stream(acts, spec, [16] * 4)
    for debiased in (False, True):
        got = streaming.linear_cka(stats, spec=spec, debiased=debiased)
        with jax.enable_x64(True):
            want = sim.batched.linear_cka_pairs([a.astype(np.float64) for a in acts],
                                                np.asarray(spec.pairs), debiased=debiased)
        np.testing.assert_allclose(got, want, atol=2e-4)


def test_compensated_sum_does_not_drift():
    """1000 additions of 1.0 to 1e8 in float32: naive loses them all, compensated keeps them."""

    def run(use_comp):
        def body(_, acc):
            if use_comp:
                return compensated.add(acc, jnp.ones((3,), jnp.float32))
            return compensated.Compensated(acc.hi + 1.0, acc.lo)

        init = compensated.Compensated(jnp.full((3,), 1e8, jnp.float32), jnp.zeros(3))
        return compensated.value(jax.lax.fori_loop(0, 1000, body, init))

    assert float(run(False)[0]) == 1e8
    assert float(run(True)[0]) == 1e8 + 1000


def test_stream_rejects_non_finite_and_wrong_layout():
    acts = [a.astype(np.float32) for a in _acts(n=8)]
    spec = streaming.StreamSpec.create(acts)
    stats = streaming.init(spec, acts)
    bad = [a.copy() for a in acts]
    bad[1][0, 0, 0] = np.nan
    with pytest.raises(sim.SimilarityInputError, match="NaN"):
        streaming.update(stats, bad, spec=spec)
    # Device arrays are checked on their device: a NaN or an inf anywhere is found, and
    # finite values whose sum overflows are not taken for one.
    for value in (np.nan, np.inf, -np.inf):
        on_device = [jnp.asarray(a) for a in acts]
        on_device[1] = on_device[1].at[0, 3, 1].set(value)
        with pytest.raises(sim.SimilarityInputError, match="NaN"):
            streaming.update(stats, on_device, spec=spec)
    huge = [jnp.full_like(jnp.asarray(a), 3e38) for a in acts]
    assert validation.all_finite(huge[0]) and not np.isfinite(float(jnp.sum(huge[0])))
    with pytest.raises(ValueError, match="layout"):
        streaming.update(stats, acts[:1], spec=spec)
    with pytest.raises(sim.SimilarityInputError, match="seen 0"):
        streaming.linear_cka(stats, spec=spec)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_minibatch_cka_matches_nguyen_reference(x64, kernel):
    acts = _acts(c=2, n=60, widths=(4, 3), seed=3)
    layout = sim.layout_of(acts)
    stats = minibatch.init(layout, jnp.float64)
    batches = [slice(0, 20), slice(20, 40), slice(40, 60)]
    for s in batches:
        stats = minibatch.update(stats, [a[:, s] for a in acts], kernel=kernel)
    got = minibatch.cka(stats)
    x, y = acts[0][0], acts[1][1]  # items 0 and 3
    want = ref.minibatch_cka([x[s] for s in batches], [y[s] for s in batches], kernel)
    np.testing.assert_allclose(float(got[0, 3]), want, rtol=1e-8)
    np.testing.assert_allclose(np.diagonal(got), 1.0, rtol=1e-12)
    with pytest.raises(sim.SimilarityInputError, match="at least 4"):
        minibatch.update(stats, [a[:, :3] for a in acts])
