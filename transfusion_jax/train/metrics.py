"""Metrics: clu accumulators for loss/accuracy, and ROC-AUC / mAP on gathered scores.

Train and eval losses and accuracies accumulate on device in clu `Collection`s (masked, so
padded eval examples do not count). Ranking metrics need every score of the split, so the
eval loop gathers logits to the host and `ranking_metrics` computes them with NumPy:

- single-label with 2 classes: ROC-AUC of the positive class;
- single-label with k > 2 classes: macro one-vs-rest ROC-AUC and mAP;
- multi-label: macro ROC-AUC and mAP over labels (labels without both a positive and a
  negative example are skipped, as scikit-learn does with a warning).
"""

# No `from __future__ import annotations`: clu reads the metric annotations at runtime.
import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics


@flax.struct.dataclass
class LossAccuracy(metrics.Collection):
    """Masked mean loss and accuracy, for train and eval."""

    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Average.from_output("accuracy")


def per_example_accuracy(logits: jnp.ndarray, labels: jnp.ndarray,
                         multi_label: bool) -> jnp.ndarray:
    """Top-1 correctness ``(n,)``; for multi-label, the fraction of labels right at p = 0.5."""
    if multi_label:
        return jnp.mean((logits > 0) == (labels > 0.5), axis=-1).astype(jnp.float32)
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve of ``scores (n,)`` for binary ``targets (n,)``.

    Computed as the Mann-Whitney statistic with average ranks for ties (the exact AUC,
    equal to scikit-learn's ``roc_auc_score``). NaN when only one class is present.
    """
    targets = targets.astype(bool)
    n_pos, n_neg = targets.sum(), (~targets).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    # Average ranks over runs of tied scores.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision (area under precision-recall, step-wise, as scikit-learn)."""
    targets = targets.astype(bool)
    if not targets.any():
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], targets[order]
    # Group tied scores: precision/recall are evaluated at each distinct threshold.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall = tp / t.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _macro(fn, scores: np.ndarray, targets: np.ndarray) -> float:
    values = [fn(scores[:, j], targets[:, j]) for j in range(scores.shape[1])]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def ranking_metrics(logits: np.ndarray, labels: np.ndarray, multi_label: bool) -> dict:
    """ROC-AUC and mAP of a whole split.

    Args:
      logits: ``(n, k)`` scores.
      labels: ``(n,)`` integer classes, or ``(n, k)`` multi-hot for multi-label.
      multi_label: whether labels are multi-hot.

    Returns:
      ``{"auc": float, "map": float}`` (NaN where undefined, e.g. a single class present).
    """
    logits = np.asarray(logits, np.float64)
    if multi_label:
        targets = np.asarray(labels) > 0.5
    else:
        targets = np.eye(logits.shape[1], dtype=bool)[np.asarray(labels).astype(int)]
    if not multi_label and logits.shape[1] == 2:
        margin = logits[:, 1] - logits[:, 0]
        return {"auc": roc_auc(margin, targets[:, 1]),
                "map": average_precision(margin, targets[:, 1])}
    return {"auc": _macro(roc_auc, logits, targets),
            "map": _macro(average_precision, logits, targets)}


def gather(x: jax.Array) -> np.ndarray:
    """A (possibly multi-process) sharded array as one host NumPy array on every process."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
