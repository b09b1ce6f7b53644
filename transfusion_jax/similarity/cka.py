"""Centered kernel alignment (CKA), linear and RBF, biased and debiased.

CKA is Kornblith, Norouzi, Lee, Hinton 2019, "Similarity of Neural Network Representations
Revisited" (ICML): ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` for Gram matrices
``K, L`` of the two representations over the same examples. The biased estimator uses the
HSIC of Gretton et al. 2005, ``tr(K H L H)`` with ``H`` the centering matrix; the debiased one
uses the unbiased HSIC estimator of Song et al. 2012 ("Feature selection via dependence
maximization", JMLR), as Kornblith et al. (Appendix) and Nguyen, Raghu, Kornblith 2021 do.
Constant factors such as ``1/(n-1)^2`` or ``1/(n(n-3))`` cancel in the ratio and are omitted.

Scale: every form rescales each (centred) representation, or each Gram matrix, by an exact
power of two before forming products (`scale`), and divides by ``sqrt(HSIC(K, K))`` and
``sqrt(HSIC(L, L))`` separately, so no intermediate overflows or underflows: float32 results
are the same at activation scales from 1e-6 to 1e6 (tested).

Degenerate input: called with concrete arrays, a representation that is constant over the
examples, non-finite values, or fewer than 4 examples for a debiased estimator raise
`SimilarityInputError`. Under ``jit``/``vmap`` (no host check) a zero denominator gives 0.0,
and a debiased self-HSIC that comes out negative (possible for tiny ``n``) is clamped to 0.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from transfusion_jax.similarity import interop, validation
from transfusion_jax.similarity import scale as scale_lib
from transfusion_jax.similarity.precision import full_precision


def center_features(x: jax.Array) -> jax.Array:
    """Subtracts the per-feature mean over examples. ``(n, d) -> (n, d)``."""
    return x - jnp.mean(x, axis=0, keepdims=True)


@full_precision
def gram_linear(x: jax.Array) -> jax.Array:
    """Linear-kernel Gram matrix ``X X^T``. ``(n, d) -> (n, n)``."""
    return x @ x.T


@full_precision
def gram_rbf(x: jax.Array, sigma_frac: float = 0.8) -> jax.Array:
    """RBF-kernel Gram matrix with a bandwidth relative to the median distance.

    Follows Kornblith et al. 2019 (and their reference code): ``sigma = sigma_frac *
    sqrt(median(D))`` where ``D`` is the full ``n x n`` matrix of squared Euclidean distances
    (diagonal zeros included), and ``K_ij = exp(-D_ij / (2 sigma^2))``.

    Args:
      x: ``(n, d)`` representation.
      sigma_frac: bandwidth as a fraction of the median distance.

    Returns:
      ``(n, n)`` Gram matrix. If every distance is 0 (a constant representation) the
      kernel is all ones.
    """
    # Distances are translation invariant and the bandwidth is relative to them, so centring
    # (fewer cancelling digits) and an exact power-of-two rescale change no result.
    xc = scale_lib.unit(center_features(x))
    sq = jnp.sum(xc * xc, axis=1)
    dist = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (xc @ xc.T), 0.0)
    dist = dist * (1.0 - jnp.eye(x.shape[0], dtype=x.dtype))
    med = jnp.median(dist)
    scale = 2.0 * sigma_frac**2 * med
    return jnp.exp(-dist / jnp.where(scale > 0, scale, 1.0))


def center_gram(gram: jax.Array, *, unbiased: bool = False) -> jax.Array:
    """Centers a symmetric Gram matrix so that ``<center(K), center(L)>`` is an HSIC.

    Biased: ``H K H`` with ``H = I - 11^T/n`` (Gretton et al. 2005). Unbiased: the
    "U-centering" of Song et al. 2012 / Szekely & Rizzo 2014 -- zero the diagonal, subtract
    row and column sums over ``n - 2`` and add back the total over ``(n-1)(n-2)``, zero the
    diagonal again -- so that ``<U(K), U(L)> = n (n-3) HSIC_1(K, L)``.

    Args:
      gram: ``(n, n)`` symmetric Gram matrix.
      unbiased: use U-centering (needs ``n >= 4``).

    Returns:
      ``(n, n)`` centered Gram matrix.
    """
    n = gram.shape[0]
    if not unbiased:
        means = jnp.mean(gram, axis=0)
        means = means - jnp.mean(means) / 2.0
        return gram - means[:, None] - means[None, :]
    eye = jnp.eye(n, dtype=gram.dtype)
    g = gram * (1.0 - eye)
    means = jnp.sum(g, axis=0) / (n - 2)
    means = means - jnp.sum(means) / (2.0 * (n - 1))
    g = g - means[:, None] - means[None, :]
    return g * (1.0 - eye)


def cka_ratio(num: jax.Array, hsic_x: jax.Array, hsic_y: jax.Array) -> jax.Array:
    """``num / (sqrt(hsic_x) sqrt(hsic_y))``; 0 where a self-HSIC is 0 (or negative), NaN
    stays NaN. The two square roots are taken before multiplying, so the denominator cannot
    overflow where its factors do not."""
    den = jnp.sqrt(jnp.maximum(hsic_x, 0.0)) * jnp.sqrt(jnp.maximum(hsic_y, 0.0))
    return jnp.where(den == 0, 0.0, num / jnp.where(den == 0, 1.0, den))  # maximum keeps NaN


@full_precision
@partial(jax.jit, static_argnames=("debiased",))
def cka_from_grams(gram_x: jax.Array, gram_y: jax.Array, *, debiased: bool = False) -> jax.Array:
    """CKA of two ``(n, n)`` Gram matrices (any kernel), Kornblith et al. 2019 eq. (4).

    Each Gram matrix is first rescaled by an exact power of two (see `scale`).
    """
    kx = center_gram(scale_lib.unit(gram_x), unbiased=debiased)
    ky = center_gram(scale_lib.unit(gram_y), unbiased=debiased)
    return cka_ratio(jnp.vdot(kx, ky), jnp.vdot(kx, kx), jnp.vdot(ky, ky))


def debiased_dot(
    cross_sq: jax.Array,
    row_dot: jax.Array,
    norm_sq_x: jax.Array,
    norm_sq_y: jax.Array,
    n: int | jax.Array,
) -> jax.Array:
    """``n (n-3) HSIC_1`` (Song et al. 2012) for linear kernels of centered features.

    With centered ``X, Y``, ``K = X X^T`` and ``L = Y Y^T`` have zero row sums, and the
    unbiased estimator reduces to ``||X^T Y||_F^2 - n/(n-2) <a, b> + ||X||^2 ||Y||^2 /
    ((n-1)(n-2))`` with ``a, b`` the squared row norms (Kornblith et al.'s feature-space form).
    Arguments broadcast, so whole matrices of pairs are corrected at once.

    Args:
      cross_sq: ``||X^T Y||_F^2``.
      row_dot: ``<a, b> = sum_i ||x_i||^2 ||y_i||^2``.
      norm_sq_x: ``||X||_F^2``.
      norm_sq_y: ``||Y||_F^2``.
      n: number of examples.
    """
    return (cross_sq - n / (n - 2.0) * row_dot
            + (norm_sq_x / (n - 1.0)) * (norm_sq_y / (n - 2.0)))


def _linear_feature_stats(x: jax.Array, y: jax.Array, debiased: bool):
    n = x.shape[0]
    xc, yc = scale_lib.unit(center_features(x)), scale_lib.unit(center_features(y))
    xy = jnp.sum(jnp.square(xc.T @ yc))
    xx = jnp.sum(jnp.square(xc.T @ xc))
    yy = jnp.sum(jnp.square(yc.T @ yc))
    if debiased:
        a = jnp.sum(xc * xc, axis=1)
        b = jnp.sum(yc * yc, axis=1)
        sa, sb = jnp.sum(a), jnp.sum(b)
        xy = debiased_dot(xy, a @ b, sa, sb, n)
        xx = debiased_dot(xx, a @ a, sa, sa, n)
        yy = debiased_dot(yy, b @ b, sb, sb, n)
    return xy, xx, yy


@partial(jax.jit, static_argnames=("debiased", "form"))
def _linear_cka(x: jax.Array, y: jax.Array, *, debiased: bool, form: str) -> jax.Array:
    if form == "feature":
        xy, xx, yy = _linear_feature_stats(x, y, debiased)
        return cka_ratio(xy, xx, yy)
    xc, yc = scale_lib.unit(center_features(x)), scale_lib.unit(center_features(y))
    return cka_from_grams(gram_linear(xc), gram_linear(yc), debiased=debiased)


def choose_linear_form(n: int, dx: int, dy: int) -> str:
    """``'feature'`` when ``X^T Y`` products are cheaper than ``n x n`` Grams, else ``'gram'``.

    Feature form costs about ``2 n (dx dy + dx^2 + dy^2)`` flops, the Gram form about
    ``2 n^2 (dx + dy) + 6 n^2``.
    """
    feature = n * (dx * dy + dx * dx + dy * dy)
    gram = n * n * (dx + dy + 3)
    return "feature" if feature <= gram else "gram"


@full_precision
def linear_cka(
    x: jax.Array, y: jax.Array, *, debiased: bool = False, form: str = "auto"
) -> jax.Array:
    """Linear CKA (Kornblith et al. 2019), biased or debiased (Song et al. 2012 HSIC).

    Args:
      x: ``(n, dx)`` representation.
      y: ``(n, dy)`` representation of the same examples.
      debiased: use the unbiased HSIC estimator (needs ``n >= 4``).
      form: ``'feature'`` (``||X^T Y||_F^2``, cheap when ``d < n``), ``'gram'`` (``n x n``
        Gram matrices, cheap when ``n < d``) or ``'auto'`` (pick the cheaper by shape). Both
        give the same value up to rounding.

    Returns:
      Scalar CKA in ``[0, 1]`` (the debiased value can be slightly negative).

    Raises:
      SimilarityInputError: see the module docstring.
    """
    x, y = interop.accept_all(x, y)
    validation.check_pair(
        x, y, min_examples=4 if debiased else 2, reason="the debiased estimator divides by n-3"
    )
    dtype = validation.compute_dtype(x, y)
    x, y = validation.as_float(x, dtype), validation.as_float(y, dtype)
    if form == "auto":
        form = choose_linear_form(x.shape[0], x.shape[1], y.shape[1])
    if form not in ("feature", "gram"):
        raise ValueError(f"form must be 'auto', 'feature' or 'gram'; got {form!r}.")
    return _linear_cka(x, y, debiased=debiased, form=form)


@partial(jax.jit, static_argnames=("debiased",))
def _rbf_cka(x: jax.Array, y: jax.Array, sigma_frac: float, *, debiased: bool) -> jax.Array:
    return cka_from_grams(gram_rbf(x, sigma_frac), gram_rbf(y, sigma_frac), debiased=debiased)


@full_precision
def rbf_cka(
    x: jax.Array, y: jax.Array, *, sigma_frac: float = 0.8, debiased: bool = False
) -> jax.Array:
    """RBF-kernel CKA (Kornblith et al. 2019), bandwidth a fraction of the median distance.

    Args:
      x: ``(n, dx)`` representation.
      y: ``(n, dy)`` representation of the same examples.
      sigma_frac: kernel width as a fraction of the median pairwise distance (see
        `gram_rbf`); Kornblith et al. report 0.2, 0.4 and 0.8.
      debiased: use the unbiased HSIC estimator (needs ``n >= 4``).

    Returns:
      Scalar CKA.
    """
    x, y = interop.accept_all(x, y)
    validation.check_pair(
        x, y, min_examples=4 if debiased else 2, reason="the debiased estimator divides by n-3"
    )
    if validation.is_concrete(sigma_frac) and not sigma_frac > 0:
        raise validation.SimilarityInputError(f"sigma_frac must be > 0; got {sigma_frac}.")
    dtype = validation.compute_dtype(x, y)
    x, y = validation.as_float(x, dtype), validation.as_float(y, dtype)
    return _rbf_cka(x, y, jnp.asarray(sigma_frac, dtype), debiased=debiased)


def linear_cka_from_moments(
    cross_sq: jax.Array,
    row_dot: jax.Array,
    norm_sq: jax.Array,
    n: int | jax.Array,
    *,
    debiased: bool = False,
) -> jax.Array:
    """Linear CKA of every pair of items from shared moments of centered features.

    The items are expected rescaled to magnitudes near 1 (`scale.unit_items`) so that these
    moments cannot overflow.

    Args:
      cross_sq: ``(P, P)`` ``||X_i^T X_j||_F^2`` of centered items.
      row_dot: ``(P, P)`` ``sum_r ||x_ir||^2 ||x_jr||^2`` (only used when debiased).
      norm_sq: ``(P,)`` ``||X_i||_F^2`` (only used when debiased).
      n: number of examples.
      debiased: Song et al. 2012 unbiased HSIC instead of the biased one.

    Returns:
      ``(P, P)`` CKA matrix.
    """
    if debiased:
        cross_sq = debiased_dot(cross_sq, row_dot, norm_sq[:, None], norm_sq[None, :], n)
    diag = jnp.diagonal(cross_sq)
    return cka_ratio(cross_sq, diag[:, None], diag[None, :])
