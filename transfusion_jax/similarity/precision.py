"""Full float32 matmul precision for the similarity engine, on every backend.

On GPUs with tensor cores XLA's default float32 matmul rounds its inputs to TF32 (a 10-bit
mantissa). That is fine for training and wrong for a similarity table: on an H100 it moved
canonical correlations by up to 3e-4 and CKA by 3.5e-5 (relative) against float64, beyond the
float32 tolerances this package documents and tests. Every public entry point is therefore
wrapped in `full_precision`, which traces it under ``jax.default_matmul_precision("highest")``.
On CPU float32 matmuls are exact float32 anyway, so nothing changes there. On the H100 the
price is small where it was measured: the whole CKA sweep benchmark moved within noise, SVCCA
not at all, PWCCA from 0.34 to 0.41 s; only the sweep's Gram sums from device-resident
activations, 0.048 s against 0.0135 s, show the full 3.5x of TF32's matmul rate.

A caller who wants TF32 speed and accepts its error says so explicitly; their choice is kept::

    with jax.default_matmul_precision("tensorfloat32"):
        sim.linear_cka_matrix(acts)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import jax

F = TypeVar("F", bound=Callable)

DEFAULT = "highest"
MARK = "full_precision"  # attribute set on wrapped functions


def caller_precision() -> str | None:
    """The precision the caller set with ``jax.default_matmul_precision``, or None."""
    return jax.config.jax_default_matmul_precision


def full_precision(fn: F) -> F:
    """Runs (and so traces) ``fn`` with float32 matmuls at `DEFAULT` precision, unless the
    caller chose a precision themselves. Works outside and inside ``jax.jit`` (the precision
    is part of JAX's trace context, so compiled versions are cached per precision)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if caller_precision() is not None:
            return fn(*args, **kwargs)
        with jax.default_matmul_precision(DEFAULT):
            return fn(*args, **kwargs)

    setattr(wrapper, MARK, True)
    return wrapper  # type: ignore[return-value]
