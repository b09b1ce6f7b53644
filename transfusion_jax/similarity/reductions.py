"""Named reductions of conv feature maps ``(n, h, w, c)`` to representations ``(m, d)``.

Raghu et al. 2017 (SVCCA) treat each spatial position of a conv map as a datapoint
(``flatten_positions``) or average over positions (``mean_pool``); Kornblith et al. 2019 also
flatten the whole map into features (``flatten_all``). The choice changes the answer, so it is
always explicit.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def flatten_positions(a: jax.Array) -> jax.Array:
    """``(n, h, w, c) -> (n*h*w, c)``: every spatial position is an example.

    The examples of two maps only correspond when both have the same ``h, w`` (resize or pool
    one first otherwise).
    """
    n, h, w, c = a.shape
    return jnp.reshape(a, (n * h * w, c))


def mean_pool(a: jax.Array) -> jax.Array:
    """``(n, h, w, c) -> (n, c)``: global average over spatial positions."""
    return jnp.mean(a, axis=(1, 2))


def flatten_all(a: jax.Array) -> jax.Array:
    """``(n, h, w, c) -> (n, h*w*c)``: every (position, channel) is a feature."""
    return jnp.reshape(a, (a.shape[0], -1))


REDUCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "flatten_positions": flatten_positions,
    "mean_pool": mean_pool,
    "flatten_all": flatten_all,
}


def reduce_conv(a: jax.Array, reduction: str) -> jax.Array:
    """Reduces a conv map ``(n, h, w, c)`` (or leaves a 2-D ``(n, d)`` one) to ``(m, d)``.

    Args:
      a: activations, shape ``(n, h, w, c)`` or already ``(n, d)``.
      reduction: one of ``REDUCTIONS`` (``flatten_positions``, ``mean_pool``,
        ``flatten_all``).

    Returns:
      The representation, ``(n*h*w, c)``, ``(n, c)`` or ``(n, h*w*c)``.

    Raises:
      ValueError: unknown reduction name, or an input that is neither 2-D nor 4-D.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"unknown conv reduction {reduction!r}; choose one of {sorted(REDUCTIONS)}."
        )
    a = jnp.asarray(a)
    if a.ndim == 2:
        return a
    if a.ndim != 4:
        raise ValueError(f"expected (n, h, w, c) or (n, d) activations; got shape {a.shape}.")
    return REDUCTIONS[reduction](a)
