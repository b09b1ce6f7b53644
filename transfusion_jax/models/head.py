"""The classifier tail every model shares: global average pool, dropout, dense ``head``."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def pooled_head(x: jnp.ndarray, out: dict[str, jnp.ndarray], *, num_classes: int,
                dtype: Any, train: bool = False, dropout_rate: float = 0.0,
                kernel_init: Any = nn.linear.default_kernel_init) -> jnp.ndarray:
    """Pools ``x (n, h, w, c)`` to ``pre_logits (n, c)`` and classifies with a Dense ``head``.

    Call it inside a model's ``@nn.compact`` method: the Dense layer becomes the model's
    ``head`` parameter group. Records ``out["pre_logits"]`` and ``out["logits"]``.

    Returns:
      float32 logits ``(n, num_classes)``.
    """
    x = jnp.mean(x, axis=(1, 2))
    out["pre_logits"] = x
    if dropout_rate:
        x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(num_classes, dtype=dtype, kernel_init=kernel_init, name="head")(x)
    logits = logits.astype(jnp.float32)
    out["logits"] = logits
    return logits
