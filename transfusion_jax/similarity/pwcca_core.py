"""PWCCA: projection-weighted CCA (Morcos, Raghu, Bengio 2018).

Morcos et al. 2018, "Insights on representational similarity in neural networks with
canonical correlation" (NeurIPS), eq. (2)-(3): weight each canonical correlation ``rho_i`` by
how much of the representation its canonical variate ``h_i`` accounts for,
``alpha_i ~ sum_j |<h_i, x_j>|`` over the (centered) neuron activation vectors ``x_j``, and
report ``sum_i alpha_i rho_i / sum_i alpha_i``. As in the authors' code, the weights come from
the side with fewer features (x on a tie).

Differences from google/svcca's ``compute_pwcca``, on purpose: neurons are centered before
the projections (the paper's variates are centered; the code adds the means back), the side is
chosen by feature count rather than by the count of neurons surviving a variance cut, and the
``else`` branch (y side) uses y's activations (the code's known bug uses x's).

Everything is computed from covariance blocks: with ``h_i = X W u_i`` (``W`` the whitening of
x, ``u_i`` the i-th left singular vector of ``W^T S_xy W_y``), ``h_i^T X = (n-1) u_i^T W^T
S_xx`` and ``||h_i||^2 = (n-1) u_i^T W^T S_xx W u_i``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from transfusion_jax.similarity import cca_core as cca_lib
from transfusion_jax.similarity import eigh as eigh_lib
from transfusion_jax.similarity.precision import full_precision


class PWCCAResult(NamedTuple):
    """Projection-weighted CCA.

    Attributes:
      mean: scalar PWCCA similarity ``sum_i weights_i rhos_i``.
      rhos: ``(d_small,)`` canonical correlations, descending (0 past ``count``).
      weights: ``(d_small,)`` projection weights, summing to 1 (0 for absent directions).
      count: number of meaningful correlations, ``min(rank_x, rank_y)``.
    """

    mean: jax.Array
    rhos: jax.Array
    weights: jax.Array
    count: jax.Array


def pwcca_from_eig(
    eig_x: eigh_lib.Eig,
    eig_y: eigh_lib.Eig,
    sxy: jax.Array,
    epsilon: float | jax.Array = 0.0,
    rtol: float | jax.Array = 1e-5,
) -> PWCCAResult:
    """PWCCA from the cross-covariance and the covariances' descending eigendecompositions.

    Lets a batched sweep decompose each item's covariance once and reuse it in every pair.

    Args:
      eig_x: ``(lam (dx,), vec (dx, dx))`` of ``S_xx``, eigenvalues descending.
      eig_y: the same for ``S_yy``.
      sxy: ``(dx, dy)`` cross-covariance.
      epsilon: ridge added to the covariance eigenvalues.
      rtol: relative rank cut.

    Returns:
      `PWCCAResult` with ``min(dx, dy)`` slots.
    """
    if sxy.shape[0] > sxy.shape[1]:  # weights come from the side with fewer features
        eig_x, eig_y, sxy = eig_y, eig_x, sxy.T
    (lx, vx), (ly, vy) = eig_x, eig_y
    mx, my = cca_lib.rank_mask(lx, rtol), cca_lib.rank_mask(ly, rtol)
    scale_x = cca_lib.whitening_scale(lx, mx, epsilon)
    wx = vx * scale_x[None, :]
    wy = cca_lib.whitening(ly, vy, my, epsilon)
    m = wx.T @ sxy @ wy  # (dx, dy), dx <= dy
    _, u = eigh_lib.eigh_upper(m @ m.T)
    u = u[:, ::-1]
    # Correlations from the vectors (||M^T u_i||) keep small rho accurate, unlike sqrt(ev).
    rhos = jnp.sqrt(jnp.sum(jnp.square(m.T @ u), axis=0))
    rank_x = jnp.sum(mx)
    count = jnp.minimum(rank_x, jnp.sum(my))
    idx = jnp.arange(u.shape[1])
    rhos = jnp.where(idx < count, jnp.clip(rhos, 0.0, 1.0), 0.0)
    # Canonical weights a_i = W_x u_i give variates h_i = X_c a_i. With S_xx = V diag(lam) V^T
    # (the decomposition W_x is built from), S_xx W_x = V diag(lam * scale), so the
    # projections and norms take one (d, d) product instead of forming a and S_xx a.
    proj = (vx * (lx * scale_x)[None, :]) @ u  # column i: <h_i, x_j> / (n-1) over neurons j
    norm_sq = jnp.sum((lx * jnp.square(scale_x))[:, None] * jnp.square(u), axis=0)  # a^T S a
    valid = (idx < rank_x) & (norm_sq > 0)
    alpha = jnp.sum(jnp.abs(proj), axis=0) / jnp.sqrt(jnp.where(valid, norm_sq, 1.0))
    alpha = jnp.where(valid, alpha, 0.0)
    total = jnp.sum(alpha)
    weights = alpha / jnp.where(total > 0, total, 1.0)
    return PWCCAResult(jnp.sum(weights * rhos), rhos, weights, count)


@full_precision
@jax.jit
def pwcca_from_cov(
    sxx: jax.Array,
    syy: jax.Array,
    sxy: jax.Array,
    epsilon: float | jax.Array = 0.0,
    rtol: float | jax.Array = 1e-5,
) -> PWCCAResult:
    """PWCCA from covariance blocks (pure, jittable, vmappable).

    Args:
      sxx: ``(dx, dx)``, syy: ``(dy, dy)``, sxy: ``(dx, dy)`` covariance blocks.
      epsilon: ridge added to the covariance eigenvalues.
      rtol: relative rank cut.

    Returns:
      `PWCCAResult` with ``min(dx, dy)`` slots.
    """
    eig_x, eig_y = eigh_lib.eigh_descending_pair(sxx, syy)
    return pwcca_from_eig(eig_x, eig_y, sxy, epsilon, rtol)


@jax.jit
def _pwcca_ascending(eig_x, eig_y, sxy, epsilon, rtol) -> PWCCAResult:
    return pwcca_from_eig(eigh_lib.descending(eig_x), eigh_lib.descending(eig_y), sxy, epsilon,
                          rtol)


@full_precision
def pwcca(
    x: jax.Array, y: jax.Array, *, epsilon: float = 0.0, rtol: float | None = None
) -> PWCCAResult:
    """Projection-weighted CCA similarity (Morcos et al. 2018).

    Args:
      x: ``(n, dx)`` representation.
      y: ``(n, dy)`` representation of the same examples.
      epsilon: ridge added to each covariance's eigenvalues.
      rtol: relative rank cut on covariance eigenvalues; default
        ``max(d, 100) * eps(dtype)``.

    Returns:
      `PWCCAResult`; ``mean`` is the PWCCA similarity.
    """
    x, y, rtol = cca_lib.prepare_pair(x, y, rtol)
    return _pwcca_ascending(*cca_lib.covariances_and_eigh(x, y), jnp.asarray(epsilon, x.dtype),
                            rtol)
