"""Before vs after of maximal-activation top-k sets: overlap, class purity, dead channels.

Reads the `max_activation.TopKResult` of one pass over the data; the definitions are in
`max_activation`'s docstring.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from transfusion_jax.analysis.max_activation import KValue, TopKResult

log = logging.getLogger(__name__)


def class_entropy(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entropy (nats) and purity ``1 - H / log(M)`` of ``(..., M)`` class histograms
    (purity 1 when ``M == 1``).

    Returns:
      ``(entropy, purity)``, each ``(...)``; NaN where a histogram is empty.
    """
    hist = np.asarray(hist, np.float64)
    total = hist.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = hist / total
        entropy = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(-1)
    entropy = np.where(total[..., 0] > 0, entropy, np.nan)
    num_classes = hist.shape[-1]
    if num_classes < 2:
        return entropy, np.where(np.isnan(entropy), np.nan, 1.0)
    return entropy, np.clip(1 - entropy / np.log(num_classes), 0, 1)  # clip: rounding only


def _row_intersections(a: np.ndarray, b: np.ndarray, valid_a: np.ndarray,
                       valid_b: np.ndarray, n: int) -> np.ndarray:
    """``|a_i & b_i|`` per row of ``(rows, k)`` index arrays (unique per row), counting only
    valid entries; vectorised by offsetting each row into its own range of keys."""
    rows = np.arange(a.shape[0], dtype=np.int64)[:, None] * (n + 2)
    keys_a = np.where(valid_a, a, n) + rows
    keys_b = np.sort(np.where(valid_b, b, n + 1) + rows, axis=None)
    found = np.searchsorted(keys_b, keys_a.ravel()).clip(max=keys_b.size - 1)
    return (keys_b[found] == keys_a.ravel()).reshape(a.shape).sum(-1)


def _top_hist(result: TopKResult, c: int, k: int) -> np.ndarray:
    """``(channels, M)`` class histogram of the positive images among checkpoint c's top-k."""
    positive = result.scores[c, :, :k] > 0
    labels = result.labels[result.indices[c, :, :k]]
    if labels.ndim == 3:
        return np.einsum("ck,ckm->cm", positive.astype(np.float64), labels)
    channels, m = positive.shape[0], result.num_classes
    flat = (np.arange(channels)[:, None] * m + labels)[positive]
    return np.bincount(flat, minlength=channels * m).reshape(channels, m).astype(np.float64)


@dataclasses.dataclass
class ChannelComparison:
    """Per channel of one layer, checkpoint ``a`` (before) vs ``b`` (after), per k.

    Attributes:
      layer: the layer's name; ``ks``: labels of the k values (``"100"``, ``"all"``); k values
        above the number of images are clamped to it.
      overlap, purity_before, purity_after, entropy_before, entropy_after, size_before,
        size_after: ``{k_label: (channels,)}``; sizes are ``|A_k|``, ``|B_k|``.
      num_positive_before, num_positive_after: ``(channels,)``; dead: ``== 0``.
      k_used: ``{k_label: k}`` after clamping to the number of images (``"all"``: n).
    """

    layer: str
    ks: list[str]
    overlap: dict[str, np.ndarray]
    purity_before: dict[str, np.ndarray]
    purity_after: dict[str, np.ndarray]
    entropy_before: dict[str, np.ndarray]
    entropy_after: dict[str, np.ndarray]
    size_before: dict[str, np.ndarray]
    size_after: dict[str, np.ndarray]
    num_positive_before: np.ndarray
    num_positive_after: np.ndarray
    num_examples: int
    k_used: dict[str, int]

    @property
    def dead_before(self) -> np.ndarray:
        return self.num_positive_before == 0

    @property
    def dead_after(self) -> np.ndarray:
        return self.num_positive_after == 0

    def summary(self) -> list[dict[str, Any]]:
        """One row per k: statistics over the channels where they are defined, dead counts."""
        return [{"layer": self.layer, "k": key, "k_used": self.k_used[key],
                 "channels": len(self.num_positive_before),
                 "mean_overlap": _nan_stat(np.mean, self.overlap[key]),
                 "median_overlap": _nan_stat(np.median, self.overlap[key]),
                 "mean_purity_before": _nan_stat(np.mean, self.purity_before[key]),
                 "mean_purity_after": _nan_stat(np.mean, self.purity_after[key]),
                 "mean_entropy_before": _nan_stat(np.mean, self.entropy_before[key]),
                 "mean_entropy_after": _nan_stat(np.mean, self.entropy_after[key]),
                 "dead_before": int(self.dead_before.sum()),
                 "dead_after": int(self.dead_after.sum()),
                 "num_examples": self.num_examples} for key in self.ks]


def _nan_stat(fn: Callable[[np.ndarray], Any], values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(fn(values)) if values.size else float("nan")


def k_label(k: KValue) -> str:
    """``"100"`` or ``"all"``; a bad value raises naming the valid forms."""
    if k == "all" or (isinstance(k, int | np.integer) and not isinstance(k, bool) and k > 0):
        return str(k)
    raise ValueError(f"k must be a positive int or 'all', got {k!r}")


def largest_finite_k(ks: Sequence[KValue]) -> int:
    """The k the pass must keep for ``ks`` (1 when only ``"all"`` is asked)."""
    return max([int(k) for k in ks if k_label(k) != "all"], default=1)


def compare_topk(result: TopKResult, ks: Sequence[KValue], *, a: int = 0,
                 b: int = 1) -> ChannelComparison:
    """Checkpoint ``a`` (before) vs ``b`` (after) of one layer: overlap, purity, entropy.

    Args:
      result: from `max_activation_topk`, with ``k >= `` every finite k asked (or the number
        of images, when that is smaller).
      ks: positive ints and/or ``"all"`` (definitions in the module docstring).
      a, b: checkpoint indices into the result's leading axis.

    Returns:
      The `ChannelComparison`.
    """
    n = result.num_examples
    out: dict[str, dict[str, np.ndarray]] = {name: {} for name in (
        "overlap", "purity_before", "purity_after", "entropy_before", "entropy_after",
        "size_before", "size_after")}
    used = {}
    for k in ks:
        key = k_label(k)
        used[key] = n if key == "all" else min(int(k), n)
        if key == "all":
            size_a, size_b = result.num_positive[a], result.num_positive[b]
            inter = result.co_positive[a, b]
            hist_a, hist_b = result.positive_hist[a], result.positive_hist[b]
        else:
            if int(k) > result.k and result.k < n:
                raise ValueError(f"k={k} was asked but the pass kept only k={result.k}")
            if int(k) > n:
                log.warning("%s: k=%s exceeds the %d images; clamped to k=%d", result.layer,
                            key, n, n)
            k = used[key]
            pos_a, pos_b = result.scores[a, :, :k] > 0, result.scores[b, :, :k] > 0
            size_a, size_b = pos_a.sum(-1), pos_b.sum(-1)
            inter = _row_intersections(result.indices[a, :, :k], result.indices[b, :, :k],
                                       pos_a, pos_b, n)
            hist_a, hist_b = _top_hist(result, a, k), _top_hist(result, b, k)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["overlap"][key] = inter / np.maximum(size_a, size_b)
        out["entropy_before"][key], out["purity_before"][key] = class_entropy(hist_a)
        out["entropy_after"][key], out["purity_after"][key] = class_entropy(hist_b)
        out["size_before"][key], out["size_after"][key] = size_a, size_b
    return ChannelComparison(result.layer, list(used), **out,
                             num_positive_before=result.num_positive[a],
                             num_positive_after=result.num_positive[b], num_examples=n,
                             k_used=used)
