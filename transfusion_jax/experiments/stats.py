"""Statistics over seeds: bootstrap intervals, censored steps-to-threshold, paired speed-ups.

The estimators are SciPy's, tested by its community; this module keeps only what they do
not do: the censoring bookkeeping of steps-to-threshold, pairing runs by seed, degenerate
cases (n <= 1, no spread), and JSON-ready results.

- Intervals: ``scipy.stats.bootstrap`` with the bias-corrected and accelerated (BCa)
  method (Efron & Tibshirani 1993, ch. 14), ``resamples`` resamples, vectorised over
  groups; the speed-up's ratio of means resamples the two groups *paired* by seed
  (``paired=True``) when they share seeds. BCa corrects the percentile interval's bias and
  skew, but with few seeds (say < 5) no bootstrap interval keeps its nominal coverage: read
  it as a rough guide. Where BCa is undefined (every resample gives the same value, or the
  jackknife has no spread) the interval is the percentile one, said in ``CI.method``.
- Kaplan-Meier: ``scipy.stats.ecdf`` of ``scipy.stats.CensoredData``.

Steps-to-threshold is a time-to-event: a run that never reached the threshold within its
``total_steps`` is right-censored at ``total_steps``. We report

- the **restricted mean** ``mean_i min(T_i, total_steps)`` (censored runs count as
  ``total_steps``). With every run censored at the same ``total_steps`` this equals the
  restricted mean survival time (the area under the Kaplan-Meier curve up to
  ``total_steps``). When any run is censored it is a lower bound on the unrestricted mean,
  flagged ``lower_bound`` so tables print "≥";
- the **Kaplan-Meier median**: the smallest event time ``t`` with ``S(t) <= 0.5``, None when
  the survival curve never reaches 0.5 (more than half the runs censored).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import scipy.stats

Statistic = Callable[..., np.ndarray]
# (seeds (n,), steps-to-threshold (n,) with None = never reached, total_steps scalar or (n,))
StepsInput = tuple[Sequence[int], Sequence[float | None], Sequence[int] | int]


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def jsonable(value: Any) -> Any:
    """A JSON-ready copy: dicts/lists recursed, NumPy values converted, NaN/inf -> None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclasses.dataclass(frozen=True)
class CI:
    """A point estimate with a bootstrap interval.

    Unpacks as ``estimate, lo, hi = ci``. ``note`` is empty when the interval is a real
    bootstrap interval, else says why not (``"n=1: ..."``, ``"n=0: ..."``).

    Attributes:
      estimate: the statistic on the data; a float, or ``(groups,)`` for 2-D input.
      lo: lower bound, same shape.
      hi: upper bound, same shape.
      n: number of values per group.
      note: why the interval is degenerate, or "".
      method: ``"BCa"``; ``"percentile"`` where BCa is undefined (for some group);
        ``"none"`` for n <= 1.
    """

    estimate: float | np.ndarray
    lo: float | np.ndarray
    hi: float | np.ndarray
    n: int
    note: str = ""
    method: str = "BCa"

    def __iter__(self) -> Iterator[Any]:
        return iter((self.estimate, self.lo, self.hi))

    def to_dict(self) -> dict[str, Any]:
        return {k: jsonable(v) for k, v in dataclasses.asdict(self).items()}


def scipy_interval(samples: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray], *,
                   paired: bool, resamples: int, confidence: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """``scipy.stats.bootstrap`` BCa interval over the last axis, percentile where BCa is
    undefined.

    Args:
      samples: one or two arrays ``(..., n)`` (two: e.g. numerator and denominator runs).
      statistic: ``statistic(*samples, axis=-1)``, vectorised.
      paired: resample the samples with the same indices (they pair element by element).
      resamples: bootstrap resamples.
      confidence: interval coverage.
      rng: the generator (results are reproducible for a seeded one).

    Returns:
      ``(lo, hi, method)``: bounds shaped like the statistic; where every resample gives
      the same value the interval is that value.
    """
    kwargs = dict(n_resamples=resamples, confidence_level=confidence, paired=paired,
                  vectorized=True, axis=-1)
    state = rng.bit_generator.state
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = scipy.stats.bootstrap(samples, statistic, method="BCa", rng=rng, **kwargs)
        lo, hi = np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)
        spread = np.ptp(res.bootstrap_distribution, axis=-1)
        flat = spread == 0
        undefined = ~(np.isfinite(lo) & np.isfinite(hi)) & ~flat
        method = "BCa"
        if undefined.any():  # same draws, percentile bounds for the groups BCa cannot do
            rng.bit_generator.state = state
            pct = scipy.stats.bootstrap(samples, statistic, method="percentile", rng=rng,
                                        **kwargs)
            lo = np.where(undefined, pct.confidence_interval.low, lo)
            hi = np.where(undefined, pct.confidence_interval.high, hi)
            method = "percentile"
    value = np.asarray(statistic(*samples, axis=-1))
    return np.where(flat, value, lo), np.where(flat, value, hi), method


def bootstrap_ci(values: Sequence[float] | np.ndarray, statistic: Statistic = np.mean, *,
                 resamples: int = 10000, confidence: float = 0.95,
                 rng: np.random.Generator | int | None = None) -> CI:
    """BCa bootstrap interval of ``statistic`` over the last axis (``scipy.stats.bootstrap``).

    Args:
      values: ``(n,)``, or ``(groups, n)`` for ``groups`` independent intervals computed
        in one vectorised call. Finite values only (drop missing ones first).
      statistic: a reduction taking ``axis=-1`` (``np.mean``, ``np.median``, ...).
      resamples: number of bootstrap resamples ``R``.
      confidence: interval coverage, e.g. 0.95.
      rng: a Generator or a seed.

    Returns:
      `CI` with floats (1-D input) or ``(groups,)`` arrays. ``n == 1``: the interval is the
      value itself (no spread can be estimated), flagged in ``note``. ``n == 0``: NaN,
      flagged in ``note``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (1, 2):
        raise ValueError(f"values must be (n,) or (groups, n), got shape {values.shape}")
    n = values.shape[-1]
    if n == 0:
        nan = np.full(values.shape[:-1], np.nan)
        nan = float(nan) if nan.ndim == 0 else nan
        return CI(nan, nan, nan, 0, "n=0: no values, no estimate", "none")
    estimate = statistic(values, axis=-1)
    if n == 1:
        return CI(_scalar(estimate), _scalar(estimate), _scalar(estimate), 1,
                  "n=1: a single value, the interval is the value itself", "none")
    lo, hi, method = scipy_interval((values,), statistic, paired=False, resamples=resamples,
                                    confidence=confidence, rng=_as_rng(rng))
    return CI(_scalar(estimate), _scalar(lo), _scalar(hi), n, method=method)


def _scalar(x: Any) -> float | np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return float(x) if x.ndim == 0 else x


def kaplan_meier(times: Sequence[float] | np.ndarray,
                 events: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier product-limit estimate of the survival ``S(t) = P(T > t)``, by
    ``scipy.stats.ecdf`` on right-censored data.

    ``S(t_j) = prod_{i <= j} (1 - d_i / r_i)`` over the distinct event times ``t_i``, with
    ``d_i`` events at ``t_i`` and ``r_i`` runs at risk (time ``>= t_i``; a run censored at
    ``t_i`` is still at risk at ``t_i``).

    Args:
      times: ``(n,)`` event or censoring time of each run.
      events: ``(n,)`` True where the event (threshold reached) happened at ``times``.

    Returns:
      ``(event_times (k,), survival (k,))``, survival just after each distinct event time.
    """
    times = np.asarray(times, dtype=np.float64)
    events = np.asarray(events, dtype=bool)
    event_times = np.unique(times[events])
    if not event_times.size:
        return event_times, np.ones(0)
    data = scipy.stats.CensoredData(uncensored=times[events], right=times[~events])
    return event_times, scipy.stats.ecdf(data).sf.evaluate(event_times)


def km_median(times: Sequence[float] | np.ndarray,
              events: Sequence[bool] | np.ndarray) -> float | None:
    """Kaplan-Meier median: the smallest event time with ``S(t) <= 0.5``, else None."""
    event_times, survival = kaplan_meier(times, events)
    below = np.flatnonzero(survival <= 0.5 + 1e-12)
    return float(event_times[below[0]]) if below.size else None


@dataclasses.dataclass(frozen=True)
class StepsSummary:
    """Steps-to-threshold of one group of runs (see the module docstring).

    Attributes:
      n_runs: runs in the group.
      n_reached: runs that reached the threshold.
      restricted_mean: `CI` of ``mean_i min(T_i, total_steps)``.
      lower_bound: True when any run is censored (the mean is then a lower bound, "≥").
      km_median: Kaplan-Meier median steps, None if the survival never reaches 0.5.
      total_steps: the (largest) run length, where censored runs are counted.
    """

    n_runs: int
    n_reached: int
    restricted_mean: CI
    lower_bound: bool
    km_median: float | None
    total_steps: int

    def to_dict(self) -> dict[str, Any]:
        d = {k: jsonable(getattr(self, k)) for k in ("n_runs", "n_reached", "lower_bound",
                                                   "km_median", "total_steps")}
        return {**d, "restricted_mean": self.restricted_mean.to_dict()}


def censored_times(steps: Sequence[float | None], total_steps: Sequence[int] | int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(times (n,), reached (n,))``: None steps become censored at their ``total_steps``."""
    total = np.broadcast_to(np.asarray(total_steps, dtype=np.float64), (len(steps),))
    reached = np.array([s is not None for s in steps], dtype=bool)
    raw = np.array([np.nan if s is None else float(s) for s in steps], dtype=np.float64)
    return np.where(reached, np.minimum(raw, total), total), reached


def steps_summary(steps: Sequence[float | None], total_steps: Sequence[int] | int, *,
                  resamples: int = 10000, confidence: float = 0.95,
                  rng: np.random.Generator | int | None = None) -> StepsSummary:
    """Restricted mean (with bootstrap CI) and KM median of steps-to-threshold.

    Args:
      steps: ``(n,)`` first step at which each run reached the threshold, None if never.
      total_steps: the run length(s), scalar or ``(n,)``: where censored runs are counted.
      resamples: bootstrap resamples.
      confidence: interval coverage.
      rng: a Generator or a seed.
    """
    times, reached = censored_times(steps, total_steps)
    ci = bootstrap_ci(times, resamples=resamples, confidence=confidence, rng=rng)
    return StepsSummary(
        n_runs=len(times), n_reached=int(reached.sum()), restricted_mean=ci,
        lower_bound=bool((~reached).any()),
        km_median=km_median(times, reached) if len(times) else None,
        total_steps=int(np.max(np.asarray(total_steps))) if len(times) else 0)


@dataclasses.dataclass(frozen=True)
class SpeedUp:
    """Speed-up of a variant over the baseline: ``mean(T_baseline) / mean(T_variant)``.

    Attributes:
      ci: `CI` of the ratio of restricted means (> 1: the variant converges faster).
      pairing: ``"paired"`` (seed indices resampled jointly over the shared seeds) or
        ``"independent"`` (the two groups resampled separately: seeds do not pair).
      seeds: the seeds used (paired) or all seeds of both groups (independent).
      bound: how censoring biases the ratio: ``""`` (no censoring), ``"lower"`` (only the
        baseline is censored: the true ratio is at least this), ``"upper"`` (only the
        variant is censored: at most this), ``"unknown"`` (both are).
      note: what was left out or why the interval is degenerate.
    """

    ci: CI
    pairing: str
    seeds: list[int]
    bound: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ci": self.ci.to_dict(), "pairing": self.pairing, "seeds": jsonable(self.seeds),
                "bound": self.bound, "note": self.note}


def _ratio_of_means(num: np.ndarray, den: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean(num, axis=axis) / np.mean(den, axis=axis)


def _ratio_ci(num: np.ndarray, den: np.ndarray, paired: bool, resamples: int,
              confidence: float, rng: np.random.Generator) -> CI:
    estimate = float(_ratio_of_means(num, den))
    if paired and len(num) == 1:
        return CI(estimate, estimate, estimate, 1, "n=1: one seed, no interval", "none")
    if min(len(num), len(den)) <= 1 and not paired:
        return CI(estimate, estimate, estimate, min(len(num), len(den)),
                  "n=1: one run in a group, no interval", "none")
    lo, hi, method = scipy_interval((num, den), _ratio_of_means, paired=paired,
                                    resamples=resamples, confidence=confidence, rng=rng)
    return CI(estimate, float(lo), float(hi), len(num) if paired else min(len(num), len(den)),
              method=method)


def paired_speedup(baseline: StepsInput, variant: StepsInput, *, resamples: int = 10000,
                   confidence: float = 0.95,
                   rng: np.random.Generator | int | None = None) -> SpeedUp:
    """Ratio of restricted-mean steps, baseline over variant, with a (paired) bootstrap CI.

    Runs are paired by seed: when the groups share at least two seeds (or have the same
    seeds), the seeds present in both are resampled jointly (one index matrix for both)
    and unshared runs are left out (said in ``note``). Otherwise each group is resampled on
    its own (``pairing = "independent"``).

    Args:
      baseline: ``(seeds (n,), steps (n,) with None = never, total_steps)`` of the baseline.
      variant: the same for the variant.
      resamples: bootstrap resamples.
      confidence: interval coverage.
      rng: a Generator or a seed.
    """
    rng = _as_rng(rng)
    (b_seeds, b_steps, b_total), (v_seeds, v_steps, v_total) = baseline, variant
    b_times, b_reached = censored_times(b_steps, b_total)
    v_times, v_reached = censored_times(v_steps, v_total)
    b_seeds, v_seeds = [int(s) for s in b_seeds], [int(s) for s in v_seeds]
    if not b_seeds or not v_seeds:
        nan = float("nan")
        return SpeedUp(CI(nan, nan, nan, 0, "n=0: a group has no runs"), "none", [])
    common = sorted(set(b_seeds) & set(v_seeds))
    paired = len(common) >= 2 or sorted(b_seeds) == sorted(v_seeds)
    note = ""
    if paired:
        b_pick = np.array([b_seeds.index(s) for s in common])
        v_pick = np.array([v_seeds.index(s) for s in common])
        left_out = len(b_seeds) + len(v_seeds) - 2 * len(common)
        if left_out:
            note = f"{left_out} run(s) without a partner seed left out"
        b_times, b_reached = b_times[b_pick], b_reached[b_pick]
        v_times, v_reached = v_times[v_pick], v_reached[v_pick]
        seeds = common
    else:
        note = "seeds do not pair: groups resampled independently"
        seeds = sorted(set(b_seeds) | set(v_seeds))
    ci = _ratio_ci(b_times, v_times, paired, resamples, confidence, rng)
    b_cens, v_cens = bool((~b_reached).any()), bool((~v_reached).any())
    bound = {(False, False): "", (True, False): "lower", (False, True): "upper",
             (True, True): "unknown"}[(b_cens, v_cens)]
    note = "; ".join(x for x in (note, ci.note) if x)
    return SpeedUp(ci, "paired" if paired else "independent", seeds, bound, note)

