"""Summaries of replicate similarities: percentile intervals, null bands, small-sample warnings.

`resample` produces bootstrap and null replicates; this turns them into what a table or a
plot shows. The null band is the central interval of the null replicates: the range of values
two unrelated representations of the same sizes reach (the noise floor).

The bootstrap interval is the percentile interval (Efron & Tibshirani 1993, ch. 13) by
default, or the basic (reverse percentile) interval ``2 v - q``, which is centred on the
bias-corrected estimate. Similarity estimators are biased upward on finite samples and a
bootstrap sample, whose duplicated examples make it effectively smaller, more so: `Summary`
reports that bias (mean replicate minus value). When it is comparable to the interval's width
(CCA-family values at a few tens of examples per feature) the percentile interval lies above
the value itself; read it as the estimate's spread, and the bias as how far the value itself
may sit above the population's.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

# CCA-family values rise toward 1 as the number of examples approaches the width: below this
# many examples per feature a value carries a warning.
MIN_EXAMPLES_PER_FEATURE = 10
CCA_FAMILY = {"cca": "CCA", "svcca": "SVCCA", "pwcca": "PWCCA"}
INTERVALS = ("percentile", "basic")  # see `summarize`


class Summary(NamedTuple):
    """Per pair ``(Q,)``: the value, its bootstrap interval and the null band.

    Attributes:
      value: the point estimate.
      low, high: bootstrap interval (NaN without bootstrap replicates).
      bias: mean bootstrap replicate minus `value` (NaN without).
      null_low, null_high: central interval of the null replicates (NaN without).
      null_mean: mean of the null replicates (NaN without).
    """

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    bias: np.ndarray
    null_low: np.ndarray
    null_high: np.ndarray
    null_mean: np.ndarray


def percentile_interval(replicates, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The central `confidence` interval of ``replicates (R, ...)`` over its first axis.

    NaN replicates (pairs not computed) are ignored; a pair without any gives NaN.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}.")
    reps = np.asarray(replicates, dtype=np.float64)
    tail = (1.0 - confidence) / 2.0
    with _quiet():
        low = np.nanquantile(reps, tail, axis=0)
        high = np.nanquantile(reps, 1.0 - tail, axis=0)
    return low, high


def summarize(value, replicates, confidence: float = 0.95, *,
              interval: str = "percentile",
              bounds: tuple[float, float] = (0.0, 1.0)) -> Summary:
    """`Summary` of a point value ``(Q,)`` and its `resample.Replicates`.

    Args:
      value: ``(Q,)`` point estimates.
      replicates: ``boot (B, Q)`` and ``null (K, Q)`` (either may be None).
      confidence: coverage of the interval and of the null band.
      interval: ``'percentile'`` (the replicates' quantiles) or ``'basic'`` (``2 value -``
        those quantiles: centred on the bias-corrected estimate, clipped to ``bounds``).
      bounds: the measure's range (every similarity of this library lies in ``[0, 1]``): a
        basic interval can reach past it (SVCCA 0.979 with replicates down to 0.90 gave an
        upper end of 1.058), so it is clipped there.
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be 'percentile' or 'basic'; got {interval!r}.")
    value = np.asarray(value, dtype=np.float64)
    nan = np.full(value.shape, np.nan)
    low, high, bias = nan, nan, nan
    if replicates.boot is not None:
        low, high = percentile_interval(replicates.boot, confidence)
        with _quiet():
            bias = np.nanmean(np.asarray(replicates.boot, np.float64), axis=0) - value
        if interval == "basic":
            low, high = (np.clip(2.0 * value - high, *bounds),
                         np.clip(2.0 * value - low, *bounds))
    if replicates.null is None:
        null_low, null_high, null_mean = nan, nan, nan
    else:
        null_low, null_high = percentile_interval(replicates.null, confidence)
        with _quiet():
            null_mean = np.nanmean(np.asarray(replicates.null, np.float64), axis=0)
    return Summary(value, low, high, bias, null_low, null_high, null_mean)


def few_examples_warning(method: str, n_examples: int, n_features: int) -> str | None:
    """The warning a CCA-family value on too few examples per feature carries, or None.

    Args:
      method: ``'cca'``, ``'svcca'``, ``'pwcca'`` (anything else: no warning, None).
      n_examples: examples (rows) the value was computed on.
      n_features: the wider of the two representations' widths.

    Returns:
      A sentence naming both numbers when ``n_examples < 10 * n_features``, else None.
    """
    if method not in CCA_FAMILY or n_examples >= MIN_EXAMPLES_PER_FEATURE * n_features:
        return None
    return (f"{CCA_FAMILY[method]} on {n_examples:,} examples of {n_features:,} features "
            f"({n_examples / n_features:.1f} per feature, fewer than "
            f"{MIN_EXAMPLES_PER_FEATURE}): CCA-family values rise toward 1 as the examples "
            "approach the features; compare it with its null band.")


def few_examples_warnings(method: str, n_examples: int, widths: Sequence[int],
                          pairs) -> list[str | None]:
    """`few_examples_warning` for each item pair ``(Q, 2)`` of items with `widths` ``(P,)``."""
    widths = np.asarray(widths)
    return [few_examples_warning(method, n_examples, int(max(widths[i], widths[j])))
            for i, j in np.asarray(pairs).reshape(-1, 2)]


@contextlib.contextmanager
def _quiet():
    """Silences NumPy's all-NaN-slice warnings (a pair without replicates is NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
