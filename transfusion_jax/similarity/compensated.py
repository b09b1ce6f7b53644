"""Compensated (Kahan-Babuska-Neumaier) summation for long-running accumulators.

Adding a million float32 batch sums into one float32 total loses about ``log2(batches)`` bits;
carrying the rounding error of every addition in a second array (Neumaier 1974) keeps the
total as accurate as the individual terms, so float32 accumulators stay exact to float32
precision for ``n`` in the millions. With ``jax_enable_x64`` the accumulators may simply be
float64 (the compensation then costs little and changes little).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Compensated(NamedTuple):
    """A running sum ``hi + lo``; ``lo`` holds the accumulated rounding error of ``hi``."""

    hi: jax.Array
    lo: jax.Array


def zeros(shape: tuple[int, ...], dtype: jnp.dtype) -> Compensated:
    """An empty compensated sum of the given shape."""
    return Compensated(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def add(acc: Compensated, value: jax.Array) -> Compensated:
    """``acc + value`` with the rounding error of the addition kept in ``lo`` (Neumaier)."""
    value = value.astype(acc.hi.dtype)
    total = acc.hi + value
    err = jnp.where(
        jnp.abs(acc.hi) >= jnp.abs(value), (acc.hi - total) + value, (value - total) + acc.hi
    )
    return Compensated(total, acc.lo + err)


def value(acc: Compensated) -> jax.Array:
    """The compensated total ``hi + lo``."""
    return acc.hi + acc.lo
