"""SVCCA: SVD reduction to the top principal directions, then CCA (Raghu et al. 2017).

Raghu, Gilmer, Yosinski, Sohl-Dickstein 2017, "SVCCA: Singular Vector Canonical Correlation
Analysis for Deep Learning Dynamics and Interpretability" (NeurIPS): keep the top singular
directions of each centered representation (those explaining a fraction ``keep`` of the
variance, 0.99 in the paper, or a fixed number), then take the mean canonical correlation of
the reduced representations.

The SVD of the centered ``(n, d)`` data is taken from the eigendecomposition of its ``d x d``
covariance (same singular vectors, ``sigma^2 = (n-1) lambda``), and the reduced data is never
formed: after the reduction the whitening is ``V_k diag(lambda_k^-1/2)``, so the canonical
correlations are the singular values of ``diag(lambda_x^-1/2) V_x^T S_xy V_y
diag(lambda_y^-1/2)``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.similarity import cca_core as cca_lib
from transfusion_jax.similarity import eigh as eigh_lib
from transfusion_jax.similarity.precision import full_precision


def keep_mask(lam: jax.Array, keep: float | int) -> jax.Array:
    """Which of the descending eigenvalues ``lam (d,)`` SVCCA keeps.

    Args:
      lam: descending covariance eigenvalues.
      keep: an int keeps that many directions; a float in ``(0, 1]`` keeps the fewest
        leading directions whose variance reaches that fraction of the total.

    Returns:
      ``(d,)`` boolean mask (a prefix).
    """
    d = lam.shape[0]
    if isinstance(keep, (int, np.integer)) and not isinstance(keep, bool):
        return jnp.arange(d) < min(int(keep), d)
    lam = jnp.maximum(lam, 0.0)
    frac = jnp.cumsum(lam) / jnp.maximum(jnp.sum(lam), jnp.finfo(lam.dtype).tiny)
    # Direction i is kept when the variance before it is still short of `keep`.
    before = jnp.concatenate([jnp.zeros((1,), lam.dtype), frac[:-1]])
    return before < keep


def _check_keep(keep: float | int) -> None:
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)):
        raise ValueError(f"keep must be a float in (0, 1] or a positive int; got {keep!r}.")
    if isinstance(keep, (int, np.integer)):
        if keep < 1:
            raise ValueError(f"keep as a number of directions must be >= 1; got {keep}.")
    elif not 0.0 < keep <= 1.0:
        raise ValueError(f"keep as a variance fraction must be in (0, 1]; got {keep}.")


def _reduced(lam, vec, keep, rtol):
    mask = keep_mask(lam, keep) & cca_lib.rank_mask(lam, rtol)
    return cca_lib.whitening(lam, vec, mask), mask


def svcca_from_eig(
    eig_x: eigh_lib.Eig,
    eig_y: eigh_lib.Eig,
    sxy: jax.Array,
    keep: float | int = 0.99,
    rtol: float | jax.Array = 1e-5,
) -> cca_lib.CCAResult:
    """SVCCA from the cross-covariance and the covariances' descending eigendecompositions.

    Args:
      eig_x: ``(lam (dx,), vec (dx, dx))`` of ``S_xx``, eigenvalues descending.
      eig_y: the same for ``S_yy``.
      sxy: ``(dx, dy)`` cross-covariance.
      keep: variance fraction in ``(0, 1]`` or number of directions (static under jit).
      rtol: relative rank cut applied on top of ``keep``.

    Returns:
      `CCAResult` with ``min(dx, dy)`` slots; ``count = min(k_x, k_y)``.
    """
    wx, mx = _reduced(*eig_x, keep, rtol)
    wy, my = _reduced(*eig_y, keep, rtol)
    return cca_lib.cca_from_whitened(sxy, wx, wy, mx, my)


@full_precision
@partial(jax.jit, static_argnames=("keep",))
def svcca_from_cov(
    sxx: jax.Array,
    syy: jax.Array,
    sxy: jax.Array,
    *,
    keep: float | int = 0.99,
    rtol: float | jax.Array = 1e-5,
) -> cca_lib.CCAResult:
    """SVCCA from covariance blocks (pure, jittable, vmappable).

    Args:
      sxx: ``(dx, dx)``, syy: ``(dy, dy)``, sxy: ``(dx, dy)`` covariance blocks.
      keep: variance fraction in ``(0, 1]`` or number of directions (static).
      rtol: relative rank cut applied on top of ``keep``.

    Returns:
      `CCAResult` with ``min(dx, dy)`` slots; ``count = min(k_x, k_y)``.
    """
    eig_x, eig_y = eigh_lib.eigh_descending_pair(sxx, syy)
    return svcca_from_eig(eig_x, eig_y, sxy, keep, rtol)


def _kept_whitening(lam_asc, vec_asc, k, keep, rtol):
    """The ``k`` leading whitened directions ``(d, k)`` and their mask, from ascending eigh.

    The canonical correlations do not depend on the order of the whitened directions, so
    the last ``k`` columns are used as they are, without reversing.
    """
    lam = lam_asc[::-1]
    mask = (keep_mask(lam, keep) & cca_lib.rank_mask(lam, rtol))[:k][::-1]
    lam_k, vec_k = lam_asc[-k:], vec_asc[:, -k:]
    return vec_k * cca_lib.whitening_scale(lam_k, mask)[None, :], mask


@partial(jax.jit, static_argnames=("kx", "ky", "keep"))
def _correlate(lx, vx, ly, vy, sxy, rtol, *, kx: int, ky: int, keep: float | int):
    wx, mx = _kept_whitening(lx, vx, kx, keep, rtol)
    wy, my = _kept_whitening(ly, vy, ky, keep, rtol)
    return cca_lib.cca_from_whitened(sxy, wx, wy, mx, my)


@partial(jax.jit, static_argnames=("keep",))
def _svcca_ascending(lx, vx, ly, vy, sxy, rtol, *, keep: float | int) -> cca_lib.CCAResult:
    return svcca_from_eig(eigh_lib.descending((lx, vx)), eigh_lib.descending((ly, vy)), sxy,
                          keep, rtol)


def _bucket(k: int, d: int, step: int = 64) -> int:
    return int(min(d, -(-max(k, 1) // step) * step))


@full_precision
def svcca(
    x: jax.Array, y: jax.Array, *, keep: float | int = 0.99, rtol: float | None = None
) -> cca_lib.CCAResult:
    """SVCCA similarity (Raghu et al. 2017).

    Called with concrete arrays, the directions SVCCA drops are sliced away before the final
    SVD (sizes rounded up to a multiple of 64 to bound recompilation); under a transformation
    the same value is computed at full size with masks.

    Args:
      x: ``(n, dx)`` representation.
      y: ``(n, dy)`` representation of the same examples.
      keep: variance fraction in ``(0, 1]`` (0.99 in the paper) or number of directions.
      rtol: relative rank cut on covariance eigenvalues; default
        ``max(d, 100) * eps(dtype)``.

    Returns:
      `CCAResult`; ``mean`` is the SVCCA similarity, ``count = min(k_x, k_y)``. Slots past
      the kept directions are 0.
    """
    _check_keep(keep)
    # Unnormalised Grams: the keep fraction and rank cut are relative and the whitened
    # cross product is scale-free, so dividing by n - 1 would only cost three passes.
    m = cca_lib.pair_moments(x, y, rtol, normalize=False)
    (lx, vx), (ly, vy), sxy = m.eig_x, m.eig_y, m.sxy
    dx, dy = sxy.shape
    if not m.concrete:  # kept sizes unknown while tracing: full size, masked
        return _svcca_ascending(lx, vx, ly, vy, sxy, m.rtol, keep=keep)
    kx = int(jnp.sum(keep_mask(lx[::-1], keep)))
    ky = int(jnp.sum(keep_mask(ly[::-1], keep)))
    res = _correlate(lx, vx, ly, vy, sxy, m.rtol, kx=_bucket(kx, dx), ky=_bucket(ky, dy),
                     keep=keep)
    # Pad back to the documented min(dx, dy) slots.
    pad = min(dx, dy) - res.rhos.shape[0]
    return res._replace(rhos=jnp.pad(res.rhos, (0, pad)))
