"""Per-example losses: softmax cross-entropy (single-label), sigmoid (multi-label)."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Cross-entropy of ``logits (n, k)`` against integer ``labels (n,)``; returns ``(n,)``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))


def sigmoid_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Mean over labels of binary cross-entropy; ``labels (n, k)`` in {0, 1}; returns ``(n,)``."""
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)).mean(-1)


LOSSES: dict[str, Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]] = {
    "softmax": softmax_cross_entropy,
    "sigmoid": sigmoid_cross_entropy,
}


def resolve_loss(name: str, multi_label: bool) -> str:
    """``auto`` becomes ``sigmoid`` for multi-label data and ``softmax`` otherwise."""
    if name == "auto":
        return "sigmoid" if multi_label else "softmax"
    return name
