"""Checks that turn degenerate input into clear errors instead of silent NaNs.

Every public similarity function runs these checks when it is called with concrete arrays
(NumPy, PyTorch CPU tensors converted by ``np.asarray``, or committed `jax.Array`s). When it is
called under a JAX transformation (``jit``, ``vmap``, ``grad``) its inputs are tracers, the
checks are skipped, and the documented in-graph value applies instead (see each function).

The value checks (finite, not constant) read each array once where it lives: NumPy inputs on
the host, `jax.Array` inputs on their device, so activations already on a GPU are never copied
back to be checked (for the benchmark's 1 GB stack on an H100 the CKA matrix call took
0.43 s with the check on the host, 0.055 s with it on the device).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class SimilarityInputError(ValueError):
    """Raised when a representation cannot give a meaningful similarity value."""


def is_concrete(*arrays: Any) -> bool:
    """True when none of `arrays` is a tracer, so values can be inspected on the host."""
    return not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(arrays))


def compute_dtype(*arrays: Any) -> jnp.dtype:
    """float64 when any input is float64 and x64 is enabled, float32 otherwise."""
    wants64 = any(getattr(a, "dtype", None) == np.float64 for a in jax.tree.leaves(arrays))
    if wants64 and jax.config.jax_enable_x64:
        return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


def as_float(x: Any, dtype: jnp.dtype | None = None) -> jax.Array:
    """Converts a NumPy/JAX/array-like input to a floating `jax.Array`."""
    if isinstance(x, jax.Array):
        return x.astype(dtype or compute_dtype(x))
    x = np.asarray(x)
    # One host-to-device copy of the target dtype: about twice as fast as jnp.asarray.
    return jax.device_put(x.astype(dtype or compute_dtype(x), copy=False))


def _check_examples(name: str, n: int, min_examples: int, reason: str) -> None:
    """Raises unless ``n >= min_examples``; ``reason`` says why that many are needed."""
    if n < min_examples:
        extra = f" ({reason})" if reason else ""
        raise SimilarityInputError(
            f"{name} has {n} examples; at least {min_examples} are needed{extra}."
        )


def _extremes(values: Any) -> tuple[bool, np.ndarray]:
    """``(all finite, constant)`` for ``values (..., n, d)``; constant has shape ``(...)``.

    The per-feature max and min over the examples: a feature is constant when they are equal
    (no subtraction, so no overflow). NumPy's max and min propagate NaN and show inf, so they
    also tell whether every value is finite. XLA's vectorised max and min may drop a NaN, so
    on a device the same pass also sums all values: a NaN or inf makes the sum non-finite,
    and only then (or when finite values overflow it) is every value checked.
    """
    if isinstance(values, jax.Array):
        sum_finite, constant = _device_extremes(values)
        finite = bool(sum_finite) or bool(jnp.all(jnp.isfinite(values)))
        return finite, np.asarray(constant)
    values = np.asarray(values)
    hi, lo = np.max(values, axis=-2), np.min(values, axis=-2)
    finite = bool(np.all(np.isfinite(hi)) and np.all(np.isfinite(lo)))
    return finite, np.all(hi == lo, axis=-1)


@jax.jit
def _device_extremes(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    hi, lo = jnp.max(values, axis=-2), jnp.min(values, axis=-2)
    return jnp.isfinite(jnp.sum(values)), jnp.all(hi == lo, axis=-1)


def all_finite(values: Any) -> bool:
    """Whether every value is finite, checked where the values live.

    A `jax.Array` is checked on its own device (a sum, as in `_extremes`; every value only
    when the sum is not finite), so only a scalar comes back to the host; anything else is
    checked with NumPy.
    """
    if isinstance(values, jax.Array):
        return bool(_sum_is_finite(values)) or bool(jnp.all(jnp.isfinite(values)))
    return bool(np.all(np.isfinite(np.asarray(values))))


@jax.jit
def _sum_is_finite(values: jax.Array) -> jax.Array:
    return jnp.isfinite(jnp.sum(values))


def _raise_non_finite(name: str, values: Any) -> None:
    """Raises, with the count of NaN/inf values (only ever called once one is known)."""
    values = np.asarray(values)
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    raise SimilarityInputError(
        f"{name} contains {bad} NaN or inf values; similarity of non-finite activations "
        "is undefined. Check the model for overflow or mask those examples."
    )


def check_representation(
    x: Any,
    name: str = "x",
    *,
    min_examples: int = 2,
    reason: str = "",
    require_variance: bool = True,
) -> None:
    """Checks one ``(n_examples, n_features)`` representation on the host.

    Args:
      x: array of shape ``(n, d)``.
      name: what to call it in messages.
      min_examples: smallest allowed ``n``.
      reason: why `min_examples` is needed (appended to the message).
      require_variance: raise when every feature is constant over the examples (the
        representation carries no information and every normalised similarity is 0/0).

    Raises:
      SimilarityInputError: wrong rank, too few examples, NaN/inf values, or zero variance.
    """
    if not is_concrete(x):
        return
    shape = np.shape(x)
    if len(shape) != 2:
        hint = (
            " Reduce conv maps first with similarity.reduce_conv(x, 'flatten_positions' | "
            "'mean_pool' | 'flatten_all', layout='NHWC' | 'NCHW')."
            if len(shape) == 4
            else ""
        )
        raise SimilarityInputError(
            f"{name} must have shape (n_examples, n_features); got shape {shape}.{hint}"
        )
    n, d = shape
    if d < 1:
        raise SimilarityInputError(f"{name} has no features (shape {shape}).")
    _check_examples(name, n, min_examples, reason)
    finite, constant = _extremes(x)
    if not finite:
        _raise_non_finite(name, x)
    if require_variance and constant:
        raise SimilarityInputError(
            f"{name} is constant over the examples (every feature has zero variance); "
            "its similarity to anything is undefined (0/0)."
        )


def check_pair(
    x: Any,
    y: Any,
    *,
    min_examples: int = 2,
    reason: str = "",
    require_variance: bool = True,
) -> None:
    """Checks two representations and that they hold the same examples (same ``n``)."""
    check_representation(
        x, "x", min_examples=min_examples, reason=reason, require_variance=require_variance
    )
    check_representation(
        y, "y", min_examples=min_examples, reason=reason, require_variance=require_variance
    )
    if is_concrete(x, y) and np.shape(x)[0] != np.shape(y)[0]:
        raise SimilarityInputError(
            f"x and y must hold the same examples in the same order; got {np.shape(x)[0]} "
            f"and {np.shape(y)[0]} rows."
        )


def check_stack(
    acts: Any, name: str = "activations", *, min_examples: int = 2, reason: str = ""
) -> None:
    """Checks a stack ``(..., n, d)`` of representations (finite values, enough examples).

    Each representation in the stack must also vary over the examples.
    """
    if not is_concrete(acts):
        return
    shape = np.shape(acts)
    if len(shape) < 3:
        raise SimilarityInputError(
            f"{name} must be stacked as (..., n_examples, n_features); got shape {shape}."
        )
    n = shape[-2]
    _check_examples(name, n, min_examples, reason)
    finite, constant = _extremes(acts)
    if not finite:
        _raise_non_finite(name, acts)
    constant = constant.reshape(-1)
    if np.any(constant):
        idx = [np.unravel_index(i, shape[:-2]) for i in np.flatnonzero(constant)][:5]
        raise SimilarityInputError(
            f"{name}: the representations at stack index {idx} are constant over the "
            "examples; their similarity is undefined (0/0)."
        )
