"""PWCCA: projection-weighted CCA (Morcos, Raghu, Bengio 2018), in two conventions.

Morcos et al. 2018, "Insights on representational similarity in neural networks with
canonical correlation" (NeurIPS), eq. (2)-(3): weight each canonical correlation ``rho_i`` by
how much of the representation its canonical direction accounts for, ``alpha_i ~ sum_j
|<h_i, x_j>|`` over the neuron activation vectors ``x_j``, and report ``sum_i alpha_i rho_i /
sum_i alpha_i``. The weights come from the side with fewer neurons (the first argument on a
tie). Two readings of that sentence give different numbers on real (non-centred) activations:

``convention="released"`` (the default) reproduces the authors' released code, google/svcca
``pwcca.compute_pwcca`` (float64 agreement to 1e-6, tested against an independent reference).
Its conventions, read from that code:

* the CCA runs on the centred covariances with symmetric (ZCA) whitening
  ``S^-1/2 = V diag(lambda^-1/2) V^T``; ``u_i`` are the left singular vectors of
  ``S_xx^-1/2 S_xy S_yy^-1/2``;
* the "directions" are ``d_i = X_c u_i + m_i 1``: the singular vectors applied to the centred
  activations without the whitening, and the mean of *neuron* ``i`` added back to *direction*
  ``i``; they are orthonormalised in order by a QR decomposition (Gram-Schmidt);
* the weights are taken against the raw, non-centred activations;
* ``epsilon`` is a ridge on the covariances divided by their largest entry (the released code
  also drops neurons whose normalised variance is below ``epsilon``, which this does not).

Because the neuron means are added to the directions, the released value depends on the sign
the SVD routine gives each singular vector: on the issue's test case the released code gives
0.79489, and the same computation with other sign choices anywhere from 0.698 to 0.813. To
reproduce it, that SVD (and the small ``d x d`` Gram-Schmidt that follows) runs exactly as in
the released code, in float64 NumPy/LAPACK (``np.linalg.svd``), on the host, through
``jax.pure_callback`` (so also under ``jit`` and ``vmap``, on every backend; not
differentiable). The released code's second branch (more neurons in the first argument)
indexes the wrong array and raises IndexError; here that case is the mirror image of the
first, so ``pwcca(x, y)`` equals ``pwcca(y, x)`` whenever the widths differ.

``convention="definition"`` is the paper's sentence read literally: ``h_i = X_c S_xx^-1/2 u_i``
are the canonical variates (unit-norm, mutually orthogonal, no QR needed) and the weights are
taken against the centred activations. It is a function of the data alone (no sign
dependence), differentiable, computed entirely on the device, and what `pwcca` returned
before the released convention became the default (0.78333 on the issue's case).

Everything is computed from covariance blocks, so the in-memory, batched and streaming forms
give the same numbers. Definition: with ``h_i = X W u_i``, ``h_i^T X = (n-1) u_i^T W^T S_xx``
and ``||h_i||^2 = (n-1) u_i^T W^T S_xx W u_i``. Released: with ``D = X_c U + 1 m^T`` and the
raw activations ``A = X_c + 1 m^T``, ``D^T D = (n-1) U^T S_xx U + n m m^T`` and ``D^T A =
(n-1) U^T S_xx + n m m^T``; with ``D^T D = R^T R`` (Cholesky; QR's ``R`` up to row signs)
the projections are ``Q^T A = R^-T D^T A``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.similarity import cca_core as cca_lib
from transfusion_jax.similarity import eigh as eigh_lib
from transfusion_jax.similarity.precision import full_precision

CONVENTIONS = ("released", "definition")


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


class Moments(NamedTuple):
    """What the released convention needs beyond the CCA itself.

    Attributes:
      sxx: ``(dx, dx)`` covariance of x (over ``n - 1``); syy: ``(dy, dy)``, of y.
      mean_x: ``(dx,)`` neuron means of x; mean_y: ``(dy,)``, of y.
      n: number of examples.
    """

    sxx: jax.Array
    syy: jax.Array
    mean_x: jax.Array
    mean_y: jax.Array
    n: jax.Array


def check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}; got {convention!r}.")


# ------------------------------------------------------------------------ definition


def _definition(eig_x, eig_y, sxy, epsilon, rtol) -> PWCCAResult:
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


# -------------------------------------------------------------------------- released


def _ordered_projections(gram: np.ndarray, cross: np.ndarray, tol: float) -> np.ndarray:
    """``R^-T cross`` for ``gram = R^T R``: the Gram-Schmidt projections, in column order.

    A direction that depends on the previous ones (residual below ``tol`` of its norm) gets a
    zero row, where a QR decomposition would invent an arbitrary orthogonal vector.
    """
    try:
        return np.linalg.solve(np.linalg.cholesky(gram), cross)
    except np.linalg.LinAlgError:
        pass
    k = gram.shape[0]
    low = np.zeros_like(gram)
    out = np.zeros_like(cross)
    for i in range(k):
        resid = gram[i, i] - low[i, :i] @ low[i, :i]
        if not resid > tol * max(gram[i, i], 0.0):
            continue
        low[i, i] = np.sqrt(resid)
        low[i + 1:, i] = (gram[i + 1:, i] - low[i + 1:, :i] @ low[i, :i]) / low[i, i]
        out[i] = (cross[i] - low[i, :i] @ out[:i]) / low[i, i]
    return out


def released_weights_host(arr, sxx, mean, n, rank, *,
                          dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """The released convention's SVD and weights, in float64 NumPy (runs on the host).

    Args:
      arr: ``(dx, dy)`` ZCA-whitened cross-covariance, ``dx <= dy``.
      sxx: ``(dx, dx)`` covariance of the weighting side.
      mean: ``(dx,)`` its neuron means.
      n: number of examples.
      rank: number of kept directions of the weighting side (the rest get weight 0).
      dtype: dtype of the results.

    Returns:
      ``weights (dx,)`` summing to 1 and ``rhos (dx,)``, the singular values.
    """
    arr, sxx, mean = (np.asarray(a, np.float64) for a in (arr, sxx, mean))
    u, s, _ = np.linalg.svd(arr)  # the released call: LAPACK gesdd, full matrices
    c = float(n) / (float(n) - 1.0)
    su = sxx @ u
    mm = c * np.outer(mean, mean)
    k = int(rank)
    gram = (u.T @ su + mm)[:k, :k]  # D^T D / (n-1)
    cross = (su.T + mm)[:k]  # D^T A / (n-1)
    proj = _ordered_projections(gram, cross, tol=1e3 * np.finfo(np.float64).eps)
    weights = np.zeros(arr.shape[0])
    weights[:k] = np.sum(np.abs(proj), axis=1)
    total = weights.sum()
    weights = weights / total if total > 0 else weights
    return weights.astype(dtype), s[: arr.shape[0]].astype(dtype)


def _host_call(arr, sxx, mean, n, rank) -> tuple[jax.Array, jax.Array]:
    """`released_weights_host` through ``jax.pure_callback``.

    Arrays cross to and from the host as their raw bits in uint32 words: JAX converts a
    callback's float64 arguments and results to float32 when x64 is enabled by a
    ``jax.enable_x64`` context rather than globally (the callback runs on a thread that does
    not see the context), which cost the released PWCCA 3e-8 of its float64 accuracy.
    """
    dx, dtype = arr.shape[0], np.dtype(arr.dtype)

    def to_words(a):  # (..., 2) words per float64, (...) per float32
        return jax.lax.bitcast_convert_type(jnp.asarray(a, dtype), jnp.uint32)

    def from_words(w, shape):
        return np.ascontiguousarray(w).reshape(-1).view(dtype).reshape(shape)

    def host(arr_w, sxx_w, mean_w, n_w, rank):
        out = released_weights_host(
            from_words(arr_w, arr.shape), from_words(sxx_w, sxx.shape),
            from_words(mean_w, mean.shape), from_words(n_w, ()).item(), rank, dtype=dtype)
        return tuple(np.ascontiguousarray(o).view(np.uint32) for o in out)

    shape = jax.ShapeDtypeStruct((dx * dtype.itemsize // 4,), jnp.uint32)
    raw = jax.pure_callback(host, (shape, shape), to_words(arr), to_words(sxx),
                            to_words(mean), to_words(n), rank.astype(jnp.int32),
                            vmap_method="sequential")
    return tuple(jax.lax.bitcast_convert_type(r.reshape(dx, -1), arr.dtype).reshape(dx)
                 for r in raw)


def _released(eig_x, eig_y, sxy, epsilon, rtol, moments: Moments) -> PWCCAResult:
    (lx, vx), (ly, vy) = eig_x, eig_y
    mx, my = cca_lib.rank_mask(lx, rtol), cca_lib.rank_mask(ly, rtol)
    # Symmetric (ZCA) inverse square roots, with the ridge relative to the largest entry.
    ridge_x = epsilon * jnp.max(jnp.abs(moments.sxx))
    ridge_y = epsilon * jnp.max(jnp.abs(moments.syy))
    zx = (vx * cca_lib.whitening_scale(lx, mx, ridge_x)[None, :]) @ vx.T
    zy = (vy * cca_lib.whitening_scale(ly, my, ridge_y)[None, :]) @ vy.T
    arr = zx @ sxy @ zy
    dx = arr.shape[0]
    rank_x = jnp.sum(mx)
    weights, rhos = _host_call(arr, moments.sxx, moments.mean_x, moments.n, rank_x)
    count = jnp.minimum(rank_x, jnp.sum(my))
    rhos = jnp.where(jnp.arange(dx) < count, jnp.clip(rhos, 0.0, 1.0), 0.0)
    return PWCCAResult(jnp.sum(weights * rhos), rhos, weights, count)


# ---------------------------------------------------------------------------- public


def pwcca_from_eig(
    eig_x: eigh_lib.Eig,
    eig_y: eigh_lib.Eig,
    sxy: jax.Array,
    epsilon: float | jax.Array = 0.0,
    rtol: float | jax.Array = 1e-5,
    moments: Moments | None = None,
) -> PWCCAResult:
    """PWCCA from the cross-covariance and the covariances' descending eigendecompositions.

    Lets a batched sweep decompose each item's covariance once and reuse it in every pair.

    Args:
      eig_x: ``(lam (dx,), vec (dx, dx))`` of ``S_xx``, eigenvalues descending.
      eig_y: the same for ``S_yy``.
      sxy: ``(dx, dy)`` cross-covariance.
      epsilon: ridge added to the covariance eigenvalues (released: relative to the
        covariance's largest entry).
      rtol: relative rank cut.
      moments: the covariances, means and ``n``: given, the released convention; None, the
        definition (see the module docstring).

    Returns:
      `PWCCAResult` with ``min(dx, dy)`` slots.
    """
    if sxy.shape[0] > sxy.shape[1]:  # weights come from the side with fewer neurons
        eig_x, eig_y, sxy = eig_y, eig_x, sxy.T
        if moments is not None:
            moments = Moments(moments.syy, moments.sxx, moments.mean_y, moments.mean_x,
                              moments.n)
    if moments is None:
        return _definition(eig_x, eig_y, sxy, epsilon, rtol)
    return _released(eig_x, eig_y, sxy, epsilon, rtol, moments)


@full_precision
@partial(jax.jit, static_argnames=("convention",))
def pwcca_from_cov(
    sxx: jax.Array,
    syy: jax.Array,
    sxy: jax.Array,
    epsilon: float | jax.Array = 0.0,
    rtol: float | jax.Array = 1e-5,
    *,
    convention: str = "released",
    mean_x: jax.Array | None = None,
    mean_y: jax.Array | None = None,
    n: int | jax.Array | None = None,
) -> PWCCAResult:
    """PWCCA from covariance blocks (pure, jittable, vmappable).

    Args:
      sxx: ``(dx, dx)``, syy: ``(dy, dy)``, sxy: ``(dx, dy)`` covariance blocks (over
        ``n - 1``).
      epsilon: ridge added to the covariance eigenvalues.
      rtol: relative rank cut.
      convention: ``'released'`` (google/svcca's ``compute_pwcca``, needs `mean_x`,
        `mean_y` and `n`) or ``'definition'`` (see the module docstring).
      mean_x: ``(dx,)`` neuron means of x; mean_y: ``(dy,)``, of y.
      n: number of examples.

    Returns:
      `PWCCAResult` with ``min(dx, dy)`` slots.

    Raises:
      ValueError: unknown convention, or the released one without means and ``n``.
    """
    check_convention(convention)
    moments = None
    if convention == "released":
        if mean_x is None or mean_y is None or n is None:
            raise ValueError(
                "the released PWCCA convention adds the neuron means back (google/svcca's "
                "compute_pwcca): pass mean_x, mean_y and n, or convention='definition'.")
        moments = Moments(sxx, syy, mean_x, mean_y, jnp.asarray(n, sxx.dtype))
    eig_x, eig_y = eigh_lib.eigh_descending_pair(sxx, syy)
    return pwcca_from_eig(eig_x, eig_y, sxy, epsilon, rtol, moments)


@partial(jax.jit, static_argnames=("released",))
def _pwcca_ascending(eig_x, eig_y, sxx, syy, sxy, mean_x, mean_y, n, epsilon, rtol, *,
                     released: bool) -> PWCCAResult:
    moments = Moments(sxx, syy, mean_x, mean_y, n) if released else None
    return pwcca_from_eig(eigh_lib.descending(eig_x), eigh_lib.descending(eig_y), sxy, epsilon,
                          rtol, moments)


@full_precision
def pwcca(
    x: jax.Array,
    y: jax.Array,
    *,
    epsilon: float = 0.0,
    rtol: float | None = None,
    convention: str = "released",
) -> PWCCAResult:
    """Projection-weighted CCA similarity (Morcos et al. 2018).

    Args:
      x: ``(n, dx)`` representation.
      y: ``(n, dy)`` representation of the same examples.
      epsilon: ridge added to each covariance's eigenvalues (``'released'``: relative to
        the covariance's largest entry, as google/svcca's ``epsilon``).
      rtol: relative rank cut on covariance eigenvalues; default
        ``max(d, 100) * eps(dtype)``.
      convention: ``'released'`` (default: the authors' google/svcca ``compute_pwcca``, to
        1e-6 in float64, with its IndexError branch mirrored) or ``'definition'`` (the
        paper's formula on canonical variates and centred activations; sign-independent and
        differentiable). The module docstring lists every difference.

    Returns:
      `PWCCAResult`; ``mean`` is the PWCCA similarity.

    Raises:
      SimilarityInputError: degenerate input (see `validation`).
      ValueError: unknown convention.
    """
    check_convention(convention)
    m = cca_lib.pair_moments(x, y, rtol, means=True)
    return _pwcca_ascending(m.eig_x, m.eig_y, m.sxx, m.syy, m.sxy, m.mean_x, m.mean_y, m.n,
                            jnp.asarray(epsilon, m.sxy.dtype), m.rtol,
                            released=convention == "released")
