"""Exact power-of-two rescaling that keeps every estimator's products inside the float range.

Each similarity of this package is invariant to scaling a representation by a constant; its
arithmetic is not. Linear CKA multiplies fourth powers of the activations (``||X^T Y||_F^2``)
and the normaliser multiplied two of those: with activations of standard deviation 300,
``n = 1,000``, ``d = 512``, that product passed float32's 3.4e38 and CKA of a representation
with itself came out 0 (NaN at larger scales); at 1e-6 the same products fall below the
smallest normal float. Multiplying by a power of two changes only a float's exponent, so it
is exact: rescaling each (centred) representation by ``2^-e``, where ``2^e`` bounds its
largest magnitude, changes no digit of any result and keeps every product near 1 whatever the
input's scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def exponent(magnitude: jax.Array) -> jax.Array:
    """``e`` with ``magnitude = m 2^e``, ``m`` in ``[0.5, 1)``; 0 for 0, inf or NaN."""
    _, e = jnp.frexp(magnitude)
    return jnp.where(jnp.isfinite(magnitude) & (magnitude > 0), e, 0).astype(jnp.int32)


def factor(magnitude: jax.Array, dtype) -> jax.Array:
    """The power of two ``2^-e`` that brings `magnitude` into ``[0.5, 1)`` (1 for 0/inf/NaN).

    Args:
      magnitude: any shape, e.g. ``(P,)`` per-item maxima.
      dtype: float dtype of the result.
    """
    return jnp.ldexp(jnp.ones(jnp.shape(magnitude), dtype), -exponent(magnitude))


def max_abs(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """``max |x|`` over `axes` (NaN stays NaN so `factor` leaves such input alone)."""
    return jnp.max(jnp.abs(x), axis=axes)


def unit(x: jax.Array) -> jax.Array:
    """`x` times the power of two that brings ``max |x|`` into ``[0.5, 1)`` (exact)."""
    return x * factor(jnp.max(jnp.abs(x)), x.dtype)


def unit_items(x: jax.Array) -> jax.Array:
    """`unit` applied to each item of a stack ``(P, n, d)`` separately."""
    return x * factor(max_abs(x, (1, 2)), x.dtype)[:, None, None]
