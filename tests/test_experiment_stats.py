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
    # Percentile bootstrap undercovers slightly at n = 30; nominal is 0.9.
    assert 0.8 <= covered.mean() <= 0.96, covered.mean()


def test_bootstrap_ci_1d_matches_independent_rows_and_other_statistics():
    values = np.array([1.0, 2.0, 3.0, 10.0])
    est, lo, hi = bootstrap_ci(values, resamples=500, rng=0)
    assert est == pytest.approx(4.0) and lo < est < hi
    med = bootstrap_ci(values, np.median, resamples=500, rng=0)
    assert med.estimate == pytest.approx(2.5) and 1.0 <= med.lo <= med.hi <= 10.0
    # The mean goes through resample counts (a matrix product), any other statistic through
    # gathered resamples; with the same seed both see the same (resamples, n) index matrix.
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
