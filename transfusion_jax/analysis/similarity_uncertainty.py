"""Bootstrap intervals, null bands and small-sample warnings for checkpoint similarities.

The checkpoint-similarity pipeline (`checkpoint_similarity`) streams each batch of
representations into the point accumulators and, beside them, into `similarity.resample`'s
replicate accumulators for the pairs its tables and figures show: ``bootstrap`` Poisson
bootstrap replicates over examples and ``null`` replicates whose examples are permuted per
item (two unrelated representations of the same sizes). `similarity.intervals` turns the
replicates into, per pair, a percentile interval and a null band; a CCA-family value on fewer
than 10 examples per feature gets a warning naming both numbers.

Cost: ``bootstrap + null`` replicate accumulations per batch for the resampled pairs (and that
many read-outs); the similarity job times it and `benchmarks/similarity_uncertainty.py`
measures it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from transfusion_jax.config import ConfigError
from transfusion_jax.similarity import intervals, resample

log = logging.getLogger(__name__)

# Columns a table gets per measure, after the value: Summary field -> column suffix. The
# bias (mean bootstrap replicate minus the value) says when the percentile interval lies
# above the value: CCA-family estimates at a few examples per feature are biased upward, and
# a resample (duplicated examples) more so.
COLUMNS = {"low": "low", "high": "high", "bias": "bias", "null_low": "null_low",
           "null_high": "null_high"}


@dataclasses.dataclass(frozen=True)
class UncertaintyOptions:
    """How many replicates, at which confidence, which interval (``bootstrap = null = 0``:
    none). ``interval`` is ``'percentile'`` or ``'basic'`` (see `intervals.summarize`)."""

    bootstrap: int = 0
    null: int = 0
    confidence: float = 0.95
    seed: int = 0
    interval: str = "percentile"

    def __post_init__(self):
        if self.bootstrap < 0 or self.null < 0:
            raise ConfigError(f"similarity.bootstrap={self.bootstrap} and similarity.null="
                              f"{self.null} must be >= 0 (0 turns that part off)")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"similarity.confidence={self.confidence} must lie in (0, 1)")
        if self.interval not in intervals.INTERVALS:
            raise ConfigError(f"similarity.interval={self.interval!r} is not one of "
                              f"{', '.join(intervals.INTERVALS)}")

    @property
    def enabled(self) -> bool:
        return self.bootstrap + self.null > 0

    @classmethod
    def from_config(cls, section) -> UncertaintyOptions:
        """From a ``config.similarity`` section (``bootstrap``, ``null``, ``confidence``,
        ``interval``)."""
        return cls(int(section.get("bootstrap", 0)), int(section.get("null", 0)),
                   float(section.get("confidence", 0.95)),
                   interval=str(section.get("interval", "percentile")))


def resampled_pairs(pairs: np.ndarray, wanted: np.ndarray | None) -> np.ndarray:
    """The pairs of ``pairs`` that get replicates: ``wanted`` (or all) without an item
    compared with itself (its value is 1 exactly)."""
    chosen = pairs if wanted is None else np.asarray(wanted, np.int64).reshape(-1, 2)
    have = {tuple(sorted(p)) for p in pairs.tolist()}
    keep = sorted({tuple(sorted(p)) for p in chosen.tolist()
                   if p[0] != p[1] and tuple(sorted(p)) in have})
    return np.asarray(keep, np.int64).reshape(-1, 2)


class UncertaintyStream:
    """Replicate accumulators beside a point stream (`resample`), fed the same batches."""

    def __init__(self, options: UncertaintyOptions, first_batch, pairs: np.ndarray, *,
                 debiased: bool, rows_per_example: int = 1):
        self.options = options
        self.pairs = pairs
        self.spec = resample.ResampleSpec.create(
            first_batch, pairs=pairs, debiased=debiased, bootstrap=options.bootstrap,
            null=options.null, rows_per_example=rows_per_example, seed=options.seed)
        self.stats = resample.init(self.spec, first_batch)

    def update(self, batch) -> None:
        self.stats = resample.update(self.stats, batch, spec=self.spec)

    def replicates(self, all_pairs: np.ndarray, values: dict[str, np.ndarray], *,
                   debiased: bool, svcca_keep: float | int) -> dict[str, resample.Replicates]:
        """Per measure of ``values`` (``linear_cka``, ``svcca``): ``boot (B, Q)`` and
        ``null (K, Q)`` replicates aligned with ``all_pairs`` (NaN for pairs without
        replicates or without a value)."""
        index = {tuple(sorted(p)): q for q, p in enumerate(all_pairs.tolist())}
        rows = np.asarray([index[tuple(p)] for p in self.pairs.tolist()], np.int64)
        out = {}
        for name, value in values.items():
            if name == "linear_cka":
                reps = resample.linear_cka(self.stats, spec=self.spec, debiased=debiased)
            else:
                computed = [k for k, q in enumerate(rows) if np.isfinite(value[q])]
                if not computed:
                    continue
                reps = resample.cca_similarity(self.stats, spec=self.spec, method=name,
                                               keep=svcca_keep, only=computed)

            def padded(r):
                if r is None:
                    return None
                full = np.full((r.shape[0], len(all_pairs)), np.nan)
                full[:, rows] = np.asarray(r)
                return full

            out[name] = resample.Replicates(padded(reps.boot), padded(reps.null))
        return out


def summaries(values: dict[str, np.ndarray], replicates: dict[str, resample.Replicates],
              options: UncertaintyOptions) -> dict[str, intervals.Summary]:
    """`intervals.Summary` per measure that has replicates, at ``options``' confidence and
    interval."""
    return {name: intervals.summarize(values[name], reps, options.confidence,
                                      interval=options.interval)
            for name, reps in replicates.items()}


def cca_warnings(method: str, num_rows: int, widths: Sequence[int], pairs: np.ndarray,
                 value: np.ndarray) -> list[str | None]:
    """Per pair, the few-examples warning of a computed CCA-family value (else None; an
    item compared with itself is 1 at any sample size and gets none)."""
    out = intervals.few_examples_warnings(method, num_rows, widths, pairs)
    return [w if np.isfinite(v) and i != j else None
            for w, v, (i, j) in zip(out, value, np.asarray(pairs).tolist(), strict=True)]


def log_warnings(warnings: dict[str, list[str | None]]) -> None:
    """Logs each distinct warning once, with how many pairs carry it."""
    for name, per_pair in warnings.items():
        distinct: dict[str, int] = {}
        for w in per_pair:
            if w:
                distinct[w] = distinct.get(w, 0) + 1
        for message, count in distinct.items():
            log.warning("%s (%d pair(s) of the %s table)", message, count, name)


def interval_cells(summaries: dict[str, intervals.Summary], name: str, q: int) -> list:
    """The interval and null-band cells of measure ``name`` for pair ``q`` (NaN: empty)."""
    s = summaries.get(name)
    return [np.nan if s is None else float(getattr(s, f)[q]) for f in COLUMNS]


def interval_header(name: str) -> list[str]:
    return [f"{name}_{suffix}" for suffix in COLUMNS.values()]
