"""Canonical correlation analysis (CCA) from covariance blocks, robust to rank deficiency.

CCA (Hotelling 1936) finds directions ``a_i, b_i`` maximising ``corr(X a_i, Y b_i)``; the
canonical correlations ``rho_i`` are the singular values of ``W_x^T S_xy W_y`` where ``W``
whitens each side (``W^T S W = I``). Raghu et al. 2017 (SVCCA) and Morcos et al. 2018 (PWCCA)
summarise representations by these ``rho_i``.

Every estimator here works on covariance blocks (``S_xx, S_yy, S_xy``), so the in-memory,
streaming and batched front ends share one implementation. Whitening uses an eigendecomposition
with a relative rank cut: directions whose variance is below ``rtol * largest`` are treated as
absent (a pseudo-inverse square root). Constant or duplicated features and ``n < d`` data
therefore give the CCA of the column spaces instead of NaN; `CCAResult.count` says how many
correlations are meaningful (``min(rank_x, rank_y)``). With ``n - 1 <= rank_x + rank_y`` the
leading correlations are 1 by construction (there are too few examples to tell), which is the
correct value of the definition, not a failure.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.similarity import eigh as eigh_lib
from transfusion_jax.similarity import interop, validation
from transfusion_jax.similarity.precision import full_precision


class CCAResult(NamedTuple):
    """Canonical correlations of two representations.

    Attributes:
      rhos: ``(min(dx, dy),)`` canonical correlations in descending order; entries past
        ``count`` are 0.
      mean: scalar mean of the first ``count`` correlations (0 when ``count == 0``).
      count: number of meaningful correlations, ``min(rank_x, rank_y)`` after the rank cut.
    """

    rhos: jax.Array
    mean: jax.Array
    count: jax.Array


def default_rtol(d: int, dtype: jnp.dtype) -> float:
    """Relative eigenvalue cut for a ``d x d`` covariance: ``max(d, 100) * eps(dtype)``."""
    return float(max(d, 100) * np.finfo(np.dtype(dtype)).eps)


# Column-block width of `gram`: the upper block triangle is computed as one matmul per row
# strip of 512 columns, which on XLA:CPU (1 thread, d = 2048) takes ~0.33 s instead of ~0.45 s
# for the full product; 512 balances the skipped lower blocks against per-dot efficiency.
GRAM_BLOCK = 512


def gram(a: jax.Array, b: jax.Array | None = None, *, block: int = GRAM_BLOCK) -> jax.Array:
    """``a^T b`` for ``a (n, d)``, ``b (n, e)``; for ``b is None``, the symmetric ``a^T a``.

    The symmetric case computes only the upper block triangle (row strips of ``block``
    columns, about 5/8 of the flops at ``d = 4 * block``) and mirrors it, so the result is
    exactly symmetric.

    Returns:
      ``(d, e)`` or ``(d, d)`` product.
    """
    if b is not None:
        return a.T @ b
    d = a.shape[1]
    if d <= block:
        return a.T @ a
    upper = jnp.zeros((d, d), a.dtype)
    for i in range(0, d, block):
        upper = upper.at[i:i + block, i:].set(a[:, i:i + block].T @ a[:, i:])
    # Mirror with triu + transpose: `jnp.where(row <= col, upper, upper.T)` is equivalent but
    # can take XLA:CPU minutes to compile at d = 2048.
    return jnp.triu(upper) + jnp.triu(upper, 1).T


def covariances(
    x: jax.Array, y: jax.Array, *, normalize: bool = True
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sample covariance blocks of centered ``x (n, dx)`` and ``y (n, dy)``, over ``n - 1``.

    ``normalize=False`` leaves out the ``1 / (n - 1)`` (three passes) for callers whose
    result does not depend on the scale.

    Returns:
      ``S_xx (dx, dx)``, ``S_yy (dy, dy)`` (exactly symmetric), ``S_xy (dx, dy)``.
    """
    xc = x - jnp.mean(x, axis=0, keepdims=True)
    yc = y - jnp.mean(y, axis=0, keepdims=True)
    blocks = gram(xc), gram(yc), gram(xc, yc)
    if not normalize:
        return blocks
    return tuple(b / (x.shape[0] - 1) for b in blocks)


def rank_mask(lam: jax.Array, rtol: float | jax.Array) -> jax.Array:
    """``(d,)`` boolean: eigenvalues above ``rtol`` times the largest (and above 0)."""
    top = jnp.max(lam)
    return (lam > rtol * top) & (lam > 0)


def whitening(
    lam: jax.Array, vec: jax.Array, mask: jax.Array, epsilon: float | jax.Array = 0.0
) -> jax.Array:
    """Whitening matrix ``V diag(mask / sqrt(lam + epsilon))``, ``(d, d)``.

    ``W^T S W`` is the identity on the kept directions (exactly so for ``epsilon = 0``) and 0
    elsewhere; ``epsilon`` is the ridge of google/svcca's ``epsilon``.
    """
    return vec * whitening_scale(lam, mask, epsilon)[None, :]


def whitening_scale(
    lam: jax.Array, mask: jax.Array, epsilon: float | jax.Array = 0.0
) -> jax.Array:
    """``(d,)`` column scales of `whitening`: ``mask / sqrt(lam + epsilon)``."""
    return jnp.where(mask, 1.0 / jnp.sqrt(jnp.where(mask, lam + epsilon, 1.0)), 0.0)


def _finish(rhos: jax.Array, count: jax.Array) -> CCAResult:
    rhos = jnp.clip(rhos, 0.0, 1.0)
    rhos = jnp.where(jnp.arange(rhos.shape[0]) < count, rhos, 0.0)
    mean = jnp.sum(rhos) / jnp.maximum(count, 1).astype(rhos.dtype)
    return CCAResult(rhos, mean, count)


def cca_from_whitened(
    sxy: jax.Array, wx: jax.Array, wy: jax.Array, mask_x: jax.Array, mask_y: jax.Array
) -> CCAResult:
    """CCA from a cross-covariance and the two whitening matrices.

    Args:
      sxy: ``(dx, dy)`` cross-covariance.
      wx: ``(dx, kx)`` whitening of x (zero columns for dropped directions).
      wy: ``(dy, ky)`` whitening of y.
      mask_x: ``(kx,)`` kept directions of x.
      mask_y: ``(ky,)`` kept directions of y.

    Returns:
      `CCAResult` with ``min(kx, ky)`` correlations.
    """
    m = wx.T @ sxy @ wy
    rhos = jnp.linalg.svd(m, compute_uv=False)
    count = jnp.minimum(jnp.sum(mask_x), jnp.sum(mask_y))
    return _finish(rhos, count)


def cca_from_eig(
    eig_x: eigh_lib.Eig,
    eig_y: eigh_lib.Eig,
    sxy: jax.Array,
    epsilon: float | jax.Array = 0.0,
    rtol: float | jax.Array = 1e-5,
) -> CCAResult:
    """CCA from the cross-covariance and the covariances' descending eigendecompositions.

    Args:
      eig_x: ``(lam (dx,), vec (dx, dx))`` of ``S_xx``, eigenvalues descending.
      eig_y: the same for ``S_yy``.
      sxy: ``(dx, dy)`` cross-covariance.
      epsilon: ridge added to the eigenvalues of ``sxx`` and ``syy``.
      rtol: relative rank cut (see `rank_mask`).

    Returns:
      `CCAResult`.
    """
    (lx, vx), (ly, vy) = eig_x, eig_y
    mx, my = rank_mask(lx, rtol), rank_mask(ly, rtol)
    return cca_from_whitened(sxy, whitening(lx, vx, mx, epsilon), whitening(ly, vy, my, epsilon),
                             mx, my)


@full_precision
@jax.jit
def cca_from_cov(
    sxx: jax.Array,
    syy: jax.Array,
    sxy: jax.Array,
    epsilon: float | jax.Array = 0.0,
    rtol: float | jax.Array = 1e-5,
) -> CCAResult:
    """CCA from covariance blocks (pure, jittable, vmappable).

    Args:
      sxx: ``(dx, dx)`` covariance of x.
      syy: ``(dy, dy)`` covariance of y.
      sxy: ``(dx, dy)`` cross-covariance.
      epsilon: ridge added to the eigenvalues of ``sxx`` and ``syy``.
      rtol: relative rank cut (see `rank_mask`).

    Returns:
      `CCAResult`.
    """
    eig_x, eig_y = eigh_lib.eigh_descending_pair(sxx, syy)
    return cca_from_eig(eig_x, eig_y, sxy, epsilon, rtol)


class PairMoments(NamedTuple):
    """What the CCA family's front end (`pair_moments`) gives every estimator.

    Attributes:
      eig_x, eig_y: ascending ``(lam, vec)`` of ``S_xx``, ``S_yy``.
      sxx, syy, sxy: covariance blocks (over ``n - 1``, or unnormalised).
      mean_x, mean_y: ``(dx,)``, ``(dy,)`` means (None unless asked for).
      n: number of examples, in the compute dtype.
      rtol: the rank cut in the compute dtype.
      concrete: whether the inputs were concrete (not traced).
    """

    eig_x: eigh_lib.Eig
    eig_y: eigh_lib.Eig
    sxx: jax.Array
    syy: jax.Array
    sxy: jax.Array
    mean_x: jax.Array | None
    mean_y: jax.Array | None
    n: jax.Array
    rtol: jax.Array
    concrete: bool


@partial(jax.jit, static_argnames=("normalize", "means"))
def _moments(x, y, *, normalize: bool, means: bool):
    blocks = covariances(x, y, normalize=normalize)
    if not means:
        return (*blocks, None, None)
    return (*blocks, jnp.mean(x, axis=0), jnp.mean(y, axis=0))


def pair_moments(x, y, rtol: float | None = None, *, normalize: bool = True,
                 means: bool = False) -> PairMoments:
    """The front end of `cca`, `svcca` and `pwcca`, written once: `prepare_pair` (checks,
    common dtype, rank cut), the covariance blocks (and means) in one jitted call, and both
    covariances' ascending eigendecompositions through `eigh.eigh_upper_many` (side by side
    on host threads for concrete CPU arrays, in graph for tracers, one matrix per call on
    CPU).
    `covariances` is exactly symmetric, so no symmetrising pass is needed.

    Args:
      x: ``(n, dx)``, y: ``(n, dy)`` representations.
      rtol: relative rank cut (default `default_rtol`).
      normalize: divide the blocks by ``n - 1`` (False for scale-free callers).
      means: also the features' means (PWCCA's released convention).
    """
    x, y, rtol = prepare_pair(x, y, rtol)
    concrete = validation.is_concrete(x, y)
    sxx, syy, sxy, mean_x, mean_y = _moments(x, y, normalize=normalize, means=means)
    eig_x, eig_y = eigh_lib.eigh_upper_many([sxx, syy], symmetrize=False)
    return PairMoments(eig_x, eig_y, sxx, syy, sxy, mean_x, mean_y,
                       jnp.asarray(x.shape[0], x.dtype), rtol, concrete)


@jax.jit
def _cca_ascending(eig_x, eig_y, sxy, epsilon, rtol) -> CCAResult:
    return cca_from_eig(eigh_lib.descending(eig_x), eigh_lib.descending(eig_y), sxy, epsilon,
                        rtol)


def prepare_pair(
    x, y, rtol: float | None = None, *, min_examples: int = 2
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Host checks, conversion to a common float dtype, and the rank cut in that dtype
    (`default_rtol` when None).

    Returns:
      ``x (n, dx)``, ``y (n, dy)`` and ``rtol ()``.
    """
    x, y = interop.accept_all(x, y)
    validation.check_pair(x, y, min_examples=min_examples, reason="a covariance needs n >= 2")
    dtype = validation.compute_dtype(x, y)
    x, y = validation.as_float(x, dtype), validation.as_float(y, dtype)
    if rtol is None:
        rtol = default_rtol(max(x.shape[1], y.shape[1]), dtype)
    return x, y, jnp.asarray(rtol, dtype)


@full_precision
def cca(
    x: jax.Array, y: jax.Array, *, epsilon: float = 0.0, rtol: float | None = None
) -> CCAResult:
    """Canonical correlations of two representations (Hotelling 1936).

    Invariant to invertible linear maps of either side.

    Args:
      x: ``(n, dx)`` representation.
      y: ``(n, dy)`` representation of the same examples.
      epsilon: ridge added to each covariance's eigenvalues (google/svcca's ``epsilon``;
        covariances are normalised by ``n - 1``).
      rtol: relative rank cut on covariance eigenvalues; default
        ``max(d, 100) * eps(dtype)``.

    Returns:
      `CCAResult` (``rhos``, ``mean``, ``count``).
    """
    m = pair_moments(x, y, rtol)
    return _cca_ascending(m.eig_x, m.eig_y, m.sxy, jnp.asarray(epsilon, m.sxy.dtype), m.rtol)
