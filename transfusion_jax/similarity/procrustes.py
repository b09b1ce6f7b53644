"""Orthogonal Procrustes distance between representations.

Ding, Denain, Steinhardt 2021, "Grounding Representation Similarity with Statistical Testing"
(NeurIPS), and Williams et al. 2021 ("Generalized shape metrics"): after centering each
representation and scaling it to unit Frobenius norm,
``d(X, Y)^2 = min_{Q orthogonal} ||X - Y Q||_F^2 = 2 - 2 ||X^T Y||_*`` (Schoenemann 1966),
with ``||.||_*`` the nuclear norm. Features of different widths are compared as if the
narrower one were padded with zero columns. ``d`` lies in ``[0, sqrt(2)]``; it is 0 iff the
representations agree up to rotation, reflection, translation and isotropic scaling.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from transfusion_jax.similarity import interop, validation
from transfusion_jax.similarity import scale as scale_lib
from transfusion_jax.similarity.precision import full_precision


@partial(jax.jit, static_argnames=("squared",))
def procrustes_from_cov(
    sxx_trace: jax.Array, syy_trace: jax.Array, sxy: jax.Array, *, squared: bool = False
) -> jax.Array:
    """Procrustes distance from ``tr S_xx``, ``tr S_yy`` and ``S_xy (dx, dy)`` (any scale)."""
    nuclear = jnp.sum(jnp.linalg.svd(sxy, compute_uv=False))
    den = jnp.sqrt(sxx_trace) * jnp.sqrt(syy_trace)  # separate roots: the product may overflow
    sq = jnp.maximum(2.0 - 2.0 * nuclear / jnp.where(den > 0, den, 1.0), 0.0)
    return sq if squared else jnp.sqrt(sq)


@partial(jax.jit, static_argnames=("squared",))
def _procrustes(x: jax.Array, y: jax.Array, *, squared: bool) -> jax.Array:
    # Exact power-of-two rescaling (the distance normalises both sides anyway).
    xc = scale_lib.unit(x - jnp.mean(x, axis=0, keepdims=True))
    yc = scale_lib.unit(y - jnp.mean(y, axis=0, keepdims=True))
    return procrustes_from_cov(jnp.vdot(xc, xc), jnp.vdot(yc, yc), xc.T @ yc, squared=squared)


@full_precision
def procrustes_distance(x: jax.Array, y: jax.Array, *, squared: bool = False) -> jax.Array:
    """Orthogonal Procrustes distance (Ding et al. 2021) of centered, unit-norm representations.

    Args:
      x: ``(n, dx)`` representation.
      y: ``(n, dy)`` representation of the same examples.
      squared: return ``d^2 = 2 - 2 ||X^T Y||_*`` instead of ``d``.

    Returns:
      Scalar distance in ``[0, sqrt(2)]`` (``[0, 2]`` squared). Under a transformation (no
      host check) a constant representation is treated as having unit norm, giving ``d^2 = 2``.
    """
    x, y = interop.accept_all(x, y)
    validation.check_pair(x, y)
    dtype = validation.compute_dtype(x, y)
    x, y = validation.as_float(x, dtype), validation.as_float(y, dtype)
    return _procrustes(x, y, squared=squared)
