"""Bootstrap intervals, censored steps-to-threshold, Kaplan-Meier and paired speed-ups."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transfusion_jax.experiments.stats import (
    bootstrap_ci,
    kaplan_meier,
    km_median,
    paired_speedup,
    steps_summary,
)


def test_bootstrap_ci_covers_true_mean_at_about_nominal_rate():
    rng = np.random.default_rng(0)
    experiments, n = 200, 30
    data = rng.normal(loc=5.0, scale=2.0, size=(experiments, n))
    ci = bootstrap_ci(data, resamples=2000, confidence=0.9, rng=1)
    covered = (ci.lo <= 5.0) & (5.0 <= ci.hi)
    assert ci.estimate.shape == ci.lo.shape == (experiments,)
    assert np.all(ci.lo <= ci.estimate) and np.all(ci.estimate <= ci.hi)
    # BCa (like any bootstrap interval) undercovers slightly at n = 30; nominal is 0.9.
    assert 0.8 <= covered.mean() <= 0.96, covered.mean()
    assert ci.method == "BCa"


def test_bootstrap_ci_1d_matches_independent_rows_and_other_statistics():
    values = np.array([1.0, 2.0, 3.0, 10.0])
    est, lo, hi = bootstrap_ci(values, resamples=500, rng=0)
    assert est == pytest.approx(4.0) and lo < est < hi
    med = bootstrap_ci(values, np.median, resamples=500, rng=0)
    assert med.estimate == pytest.approx(2.5) and 1.0 <= med.lo <= med.hi <= 10.0
    # The statistic is any vectorised reduction: the same function by another name gives
    # the same interval from the same seed.
    gathered = bootstrap_ci(values, lambda v, axis: np.mean(v, axis=axis), resamples=500, rng=0)
    assert (gathered.lo, gathered.hi) == pytest.approx((lo, hi))


def test_bootstrap_ci_single_value_and_empty_are_flagged():
    one = bootstrap_ci([0.7], resamples=100, rng=0)
    assert (one.estimate, one.lo, one.hi, one.n) == (0.7, 0.7, 0.7, 1)
    assert one.note.startswith("n=1")
    empty = bootstrap_ci([], resamples=100, rng=0)
    assert empty.n == 0 and empty.note.startswith("n=0")
    assert all(math.isnan(x) for x in empty)
    assert empty.to_dict()["estimate"] is None  # JSON-ready: NaN -> None
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=95)


def test_kaplan_meier_hand_computed_with_censoring():
    # Runs: events at 100, 200, 300; censored at 200, 500, 500.
    times = [100, 200, 200, 300, 500, 500]
    events = [True, True, False, True, False, False]
    t, s = kaplan_meier(times, events)
    # t=100: 6 at risk, 1 event -> 5/6; t=200: 5 at risk (the run censored at 200 is still
    # at risk), 1 event -> 5/6 * 4/5 = 2/3; t=300: 3 at risk, 1 event -> 2/3 * 2/3 = 4/9.
    np.testing.assert_array_equal(t, [100, 200, 300])
    np.testing.assert_allclose(s, [5 / 6, 2 / 3, 4 / 9])
    assert km_median(times, events) == 300
    # Survival stays above 0.5 (one event of four): no median.
    assert km_median([100, 400, 400, 400], [True, False, False, False]) is None
    # Exactly 0.5 counts as reached (smallest t with S(t) <= 0.5).
    assert km_median([100, 400], [True, False]) == 100


def test_restricted_mean_is_flagged_lower_bound_when_censored():
    st = steps_summary([100, 300, None], total_steps=1000, resamples=500, rng=0)
    assert (st.n_runs, st.n_reached, st.total_steps) == (3, 2, 1000)
    assert st.restricted_mean.estimate == pytest.approx((100 + 300 + 1000) / 3)
    assert st.lower_bound
    assert st.km_median == 300  # S: 2/3 after 100, 1/3 after 300
    full = steps_summary([100, 300, 500], total_steps=1000, resamples=500, rng=0)
    assert not full.lower_bound and full.km_median == 300
    assert full.to_dict()["restricted_mean"]["estimate"] == pytest.approx(300)


def test_paired_speedup_equals_known_ratio_on_deterministic_data():
    seeds = [0, 1, 2]
    variant = [100, 250, 400]
    baseline = [2 * v for v in variant]
    sp = paired_speedup((seeds, baseline, 1000), (seeds, variant, 1000), resamples=1000, rng=0)
    assert sp.pairing == "paired" and sp.seeds == seeds and sp.bound == ""
    assert (sp.ci.estimate, sp.ci.lo, sp.ci.hi) == pytest.approx((2.0, 2.0, 2.0))


def test_speedup_unpaired_seeds_fall_back_to_independent_and_say_so():
    sp = paired_speedup(([0, 1, 2], [400, 500, 600], 1000), ([3, 4], [200, 300], 1000),
                        resamples=1000, rng=0)
    assert sp.pairing == "independent" and "independently" in sp.note
    assert sp.ci.estimate == pytest.approx(2.0) and sp.ci.lo < 2.0 < sp.ci.hi


def test_speedup_partial_pairing_and_censoring_bounds():
    # Seed 3 has no partner: left out; baseline censored -> the true ratio is at least this.
    sp = paired_speedup(([0, 1, 2], [400, None, 600], 1000), ([0, 1, 2, 3], [200, 500, 300, 9],
                                                               1000), resamples=500, rng=0)
    assert sp.pairing == "paired" and sp.seeds == [0, 1, 2] and "1 run" in sp.note
    assert sp.bound == "lower"
    assert sp.ci.estimate == pytest.approx((400 + 1000 + 600) / (200 + 500 + 300))
    upper = paired_speedup(([0, 1], [400, 600], 1000), ([0, 1], [None, 300], 1000), rng=0,
                           resamples=100)
    assert upper.bound == "upper"
    single = paired_speedup(([0], [400], 1000), ([0], [200], 1000), rng=0, resamples=100)
    assert single.ci.n == 1 and single.ci.lo == single.ci.hi == 2.0 and "n=1" in single.note


def test_intervals_are_scipys_bca_vectorised_over_groups():
    import scipy.stats

    rng = np.random.default_rng(3)
    values = rng.gamma(2.0, 50.0, size=(4, 7))  # skewed, where BCa and percentile differ
    ci = bootstrap_ci(values, resamples=2000, rng=11)
    for g in range(4):
        ref = scipy.stats.bootstrap((values[g],), np.mean, n_resamples=2000, method="BCa",
                                    rng=np.random.default_rng(11))
        one = bootstrap_ci(values[g], resamples=2000, rng=11)
        assert (one.lo, one.hi) == pytest.approx(
            (ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12)
        # Grouped in one call: the same distribution of resamples, so close to each row's
        # own (the draws differ, the interval's width is the same to a few percent).
        width, ref_width = ci.hi[g] - ci.lo[g], one.hi - one.lo
        assert width == pytest.approx(ref_width, rel=0.15)
    assert ci.method == "BCa"


def test_paired_speedup_is_scipys_paired_bca_of_the_ratio_of_means():
    import scipy.stats

    seeds = [0, 1, 2, 3, 4]
    baseline, variant = [300, 420, 350, 500, 380], [200, 260, 300, 240, 210]
    sp = paired_speedup((seeds, baseline, 1000), (seeds, variant, 1000), resamples=3000, rng=5)
    ref = scipy.stats.bootstrap(
        (np.array(baseline, float), np.array(variant, float)),
        lambda a, b, axis: a.mean(axis) / b.mean(axis), paired=True, n_resamples=3000,
        method="BCa", rng=np.random.default_rng(5))
    assert sp.ci.estimate == pytest.approx(sum(baseline) / sum(variant))
    assert (sp.ci.lo, sp.ci.hi) == pytest.approx(
        (ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12)
    assert sp.ci.method == "BCa"


def test_kaplan_meier_is_scipys_ecdf_on_censored_data():
    import scipy.stats

    rng = np.random.default_rng(0)
    times = rng.integers(1, 20, 40) * 25.0
    events = rng.random(40) < 0.7
    t, s = kaplan_meier(times, events)
    ref = scipy.stats.ecdf(scipy.stats.CensoredData(uncensored=times[events],
                                                    right=times[~events])).sf
    np.testing.assert_allclose(s, ref.evaluate(t), rtol=1e-12)
    # and the product-limit formula, written out: S(t_j) = prod (1 - d_i / r_i)
    at_risk = (times[None, :] >= t[:, None]).sum(1)
    deaths = ((times[None, :] == t[:, None]) & events[None, :]).sum(1)
    np.testing.assert_allclose(s, np.cumprod(1 - deaths / at_risk), rtol=1e-12)
