"""Metrics: clu accumulators for loss/accuracy, and ROC-AUC / mAP on gathered scores.

Train and eval losses and accuracies accumulate on device in clu `Collection`s (masked, so
padded eval examples do not count). Ranking metrics need every score of the split, so the
eval loop gathers logits to the host and `ranking_metrics` computes them with scikit-learn
(``roc_auc_score``, ``average_precision_score``) on the task's probabilities:

- single-label with 2 classes: ROC-AUC and AP of the positive class's probability;
- single-label with k > 2 classes: macro one-vs-rest ROC-AUC and mAP on softmax
  probabilities (scikit-learn's ``multi_class="ovr"``);
- multi-label: macro ROC-AUC and mAP over labels on sigmoid probabilities (labels without
  both a positive and a negative example are skipped).
"""

# No `from __future__ import annotations`: clu reads the metric annotations at runtime.
import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics
from sklearn.metrics import average_precision_score, roc_auc_score


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


def class_scores(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    """Per-class scores ``(n, k)`` float64 that rank examples as the task's probabilities do.

    Single-label: log-softmax, i.e. the log of the softmax probabilities the model predicts
    (the same ranking per class as the probabilities, without float underflow ties).
    Multi-label: the logits, ranked as their sigmoid probabilities (sigmoid is monotone and
    acts per label).
    """
    logits = np.asarray(logits, np.float64)
    if multi_label:
        return logits
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def ranking_metrics(logits: np.ndarray, labels: np.ndarray, multi_label: bool) -> dict:
    """ROC-AUC and mAP of a whole split, by scikit-learn on class probabilities.

    - 2 classes, single-label: ``roc_auc_score`` / ``average_precision_score`` of the
      positive class's probability;
    - k > 2 classes, single-label: macro one-vs-rest on softmax probabilities, equal to
      ``roc_auc_score(labels, softmax(logits), multi_class="ovr")`` (the field's
      reference; ranking raw logits one-vs-rest gives a different number);
    - multi-label: macro over labels on sigmoid probabilities.

    Classes (or labels) without both a positive and a negative example in the split are
    left out of the macro averages (their AUC is undefined).

    Args:
      logits: ``(n, k)`` model outputs.
      labels: ``(n,)`` integer classes, or ``(n, k)`` multi-hot for multi-label.
      multi_label: whether labels are multi-hot.

    Returns:
      ``{"auc": float, "map": float}`` (NaN where undefined, e.g. a single class present).
    """
    scores = class_scores(logits, multi_label)
    if multi_label:
        targets = np.asarray(labels) > 0.5
    else:
        targets = np.eye(scores.shape[1], dtype=bool)[np.asarray(labels).astype(int)]
    if not multi_label and scores.shape[1] == 2:
        targets, scores = targets[:, 1:], scores[:, 1:]
    defined = targets.any(axis=0) & ~targets.all(axis=0)
    if not defined.any():
        return {"auc": float("nan"), "map": float("nan")}
    targets, scores = targets[:, defined], scores[:, defined]
    return {"auc": float(roc_auc_score(targets, scores, average="macro")),
            "map": float(average_precision_score(targets, scores, average="macro"))}


def gather(x: jax.Array) -> np.ndarray:
    """A (possibly multi-process) sharded array as one host NumPy array on every process."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
