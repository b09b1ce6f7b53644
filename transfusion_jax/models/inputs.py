"""Input conventions shared by the torchvision-derived models."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_to_inception_range(x: jnp.ndarray, dtype: Any) -> jnp.ndarray:
    """torchvision's ``transform_input``: ImageNet-normalised RGB ``(n, h, w, 3)`` to the
    ``[-1, 1]`` range Google's Inception weights were trained on."""
    mean, std = jnp.array(IMAGENET_MEAN, dtype), jnp.array(IMAGENET_STD, dtype)
    return x * (std / 0.5) + (mean - 0.5) / 0.5
