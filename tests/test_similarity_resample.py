"""Bootstrap and null replicates from one streamed pass equal the statistic recomputed on the
resampled / permuted examples; summaries and small-sample warnings say what they should."""

import jax
import numpy as np
import pytest

from tests import similarity_reference as ref
from transfusion_jax import similarity as sim
from transfusion_jax.similarity import intervals, memory, resample, streaming


def _acts(n=60, widths=(5, 5), c=2, seed=0):
    r = np.random.default_rng(seed)
    z = r.standard_normal((n, 3))
    return [np.stack([np.maximum(z @ r.standard_normal((3, w)) + 0.8 * r.standard_normal((n, w))
                                 + 0.3, 0) for _ in range(c)]) for w in widths]


def _item(acts, i):
    layers = len(acts)
    return acts[i % layers][i // layers]


def _run(acts, spec, sizes):
    stats = resample.init(spec, [a[:, :sizes[0]] for a in acts])
    start, draws = 0, []
    for t, b in enumerate(sizes):
        draws.append(resample.batch_draws(spec, t, b))
        stats = resample.update(stats, [a[:, start:start + b] for a in acts], spec=spec)
        start += b
    weights = np.concatenate([np.asarray(w) for w, _ in draws], axis=1)  # (B, n)
    offsets = np.cumsum([0] + list(sizes[:-1]))
    order = np.concatenate([np.asarray(o) + off for (_, o), off in zip(draws, offsets,
                                                                        strict=True)], axis=2)
    return stats, weights, order  # order: (K, P, n) global row order per item


PAIRS = np.array([[0, 2], [1, 3], [0, 1], [3, 0]])  # same layer, across layers, both orders


def _fns():
    """The float64 NumPy references (`similarity_reference`) of each statistic."""
    return {
        "linear_cka": lambda a, b: ref.linear_cka(a, b),
        "debiased": lambda a, b: ref.linear_cka(a, b, debiased=True),
        "cca": lambda a, b: np.mean(ref.cca(a, b)),
        "svcca": lambda a, b: np.mean(ref.svcca(a, b, 0.95)),
        "pwcca": lambda a, b: ref.released_pwcca(a, b)[0],
    }


def _replicates(name, stats, spec):
    if name in ("linear_cka", "debiased"):
        return resample.linear_cka(stats, spec=spec, debiased=name == "debiased")
    return resample.cca_similarity(stats, spec=spec, method=name, keep=0.95)


@pytest.fixture(scope="module")
def streamed():
    """One float64 pass with bootstrap and null replicates; every statistic read off it."""
    with jax.enable_x64(True):
        acts = _acts()
        spec = resample.ResampleSpec.create(acts, pairs=PAIRS, debiased=True, bootstrap=3,
                                            null=2, seed=7)
        stats, weights, order = _run(acts, spec, [25, 35])
        reps = {name: jax.tree.map(np.asarray, _replicates(name, stats, spec))
                for name in _fns()}
    return acts, weights, order, reps


@pytest.mark.parametrize("name", ["linear_cka", "debiased", "cca", "svcca", "pwcca"])
def test_bootstrap_replicates_are_the_statistic_on_resampled_examples(streamed, name):
    acts, weights, _, reps = streamed
    got = reps[name].boot
    assert got.shape == (3, len(PAIRS))
    fn = _fns()[name]
    for b in range(3):
        rows = np.repeat(np.arange(60), weights[b].astype(int))
        want = [float(fn(_item(acts, i)[rows], _item(acts, j)[rows])) for i, j in PAIRS]
        np.testing.assert_allclose(got[b], want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", ["linear_cka", "debiased", "cca", "svcca", "pwcca"])
def test_null_replicates_compare_each_item_with_a_shuffled_counterpart(streamed, name):
    acts, _, order, reps = streamed
    got = reps[name].null
    fn = _fns()[name]
    for k in range(2):
        want = [float(fn(_item(acts, i)[order[k, i]], _item(acts, j)[order[k, j]]))
                for i, j in PAIRS]
        np.testing.assert_allclose(got[k], want, rtol=1e-7, atol=1e-9)
    # Within each batch the rows are a permutation of that batch's rows.
    assert sorted(order[0, 1, :25]) == list(range(25))
    assert sorted(order[1, 2, 25:]) == list(range(25, 60))


def test_rows_of_one_example_move_together():
    acts = [a.astype(np.float32) for a in _acts(n=24)]
    spec = resample.ResampleSpec.create(acts, pairs=PAIRS, bootstrap=4, null=2,
                                        rows_per_example=3)
    weights, order = resample.batch_draws(spec, 0, 24)
    w = np.asarray(weights).reshape(4, 8, 3)
    assert (w == w[:, :, :1]).all()
    o = np.asarray(order).reshape(2, 4, 8, 3)
    assert (o % 3 == np.arange(3)).all() and (o == o[..., :1] + np.arange(3)).all()
    with pytest.raises(ValueError, match="whole examples"):
        resample.update(None, [a[:, :10] for a in acts], spec=spec)


def test_null_band_is_the_noise_floor():
    """Unrelated representations land inside the null band, related ones far above it; SVCCA
    of unrelated 64-dimensional features on 64 examples is high, and the band shows it."""
    r = np.random.default_rng(2)
    n, d = 64, 64
    base = r.standard_normal((n, d)).astype(np.float32)
    acts = np.stack([base, r.standard_normal((n, d)).astype(np.float32),
                     (base @ r.standard_normal((d, d)) * 0.1 + base).astype(np.float32)])[:, None]
    pairs = np.array([[0, 1], [0, 2]])  # unrelated, related
    spec = resample.ResampleSpec.create(acts, pairs=pairs, bootstrap=30, null=40, seed=1)
    point = streaming.init(spec.stream, acts)
    point = streaming.update(point, acts, spec=spec.stream)
    stats = resample.update(resample.init(spec, acts), acts, spec=spec)
    svcca = intervals.summarize(streaming.cca_similarity(point, spec=spec.stream),
                                resample.cca_similarity(stats, spec=spec))
    assert svcca.value[0] > 0.6  # high although unrelated
    assert svcca.null_low[0] <= svcca.value[0] <= svcca.null_high[0]
    assert svcca.value[1] > svcca.null_high[1]
    cka = intervals.summarize(streaming.linear_cka(point, spec=spec.stream),
                              resample.linear_cka(stats, spec=spec))
    assert cka.null_low[0] <= cka.value[0] <= cka.null_high[0]
    assert cka.value[1] > cka.null_high[1] + 0.3
    assert cka.low[1] < cka.high[1] and np.isfinite(cka.bias).all()
    np.testing.assert_allclose(cka.value, sim.linear_cka_pairs(acts, pairs), atol=1e-6)
    # The same seed draws the same replicates.
    again = resample.update(resample.init(spec, acts), acts, spec=spec)
    np.testing.assert_array_equal(np.asarray(resample.linear_cka(again, spec=spec).boot),
                                  np.asarray(resample.linear_cka(stats, spec=spec).boot))


def test_summaries_and_warnings():
    reps = resample.Replicates(boot=np.array([[0.1, np.nan], [0.3, np.nan], [0.2, np.nan]]),
                               null=None)
    s = intervals.summarize(np.array([0.2, 0.5]), reps, confidence=0.5)
    np.testing.assert_allclose([s.low[0], s.high[0]], [0.15, 0.25])
    assert np.isnan(s.low[1]) and np.isnan(s.null_low).all()
    basic = intervals.summarize(np.array([0.3, 0.5]), reps, confidence=0.5, interval="basic")
    np.testing.assert_allclose([basic.low[0], basic.high[0]], [0.35, 0.45])
    np.testing.assert_allclose(basic.bias[0], -0.1)
    # A basic interval stays inside the measure's range [0, 1].
    near_one = resample.Replicates(boot=np.array([[0.90], [0.95], [0.99]]), null=None)
    clipped = intervals.summarize(np.array([0.98]), near_one, confidence=0.9, interval="basic")
    assert clipped.high[0] == 1.0 and 0.96 < clipped.low[0] < 0.98
    text = intervals.few_examples_warning("svcca", 64, 64)
    assert "64 examples of 64 features" in text and "fewer than 10" in text
    assert intervals.few_examples_warning("svcca", 640, 64) is None
    assert intervals.few_examples_warning("linear_cka", 10, 64) is None
    warned = intervals.few_examples_warnings("pwcca", 1000, [16, 128, 64], [(0, 0), (0, 1)])
    assert warned[0] is None and "1,000 examples of 128 features" in warned[1]


def test_replicate_memory_is_checked():
    acts = [a.astype(np.float32) for a in _acts()]
    spec = resample.ResampleSpec.create(acts, pairs=PAIRS, bootstrap=200, null=50)
    need = spec.stream.state_bytes(np.float32, 250)
    with pytest.raises(memory.SimilarityMemoryError, match="200 bootstrap \\+ 50 null"):
        resample.init(spec, acts, memory_limit=need // 2)
    with pytest.raises(ValueError, match="not both 0"):
        resample.ResampleSpec.create(acts, bootstrap=0, null=0)
