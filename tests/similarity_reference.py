"""Float64 NumPy references written from the papers' definitions (not from the library).

Each function follows the published formula as literally as practical, on a different
computational path from `transfusion_jax.similarity` (explicit centering matrices, data-space
SVDs and QR, loops), so agreement is evidence that both are right.
"""

from __future__ import annotations

import numpy as np


def centering(n: int) -> np.ndarray:
    """``H = I - 11^T / n``."""
    return np.eye(n) - np.ones((n, n)) / n


def gram_linear(x: np.ndarray) -> np.ndarray:
    return x @ x.T


def gram_rbf(x: np.ndarray, sigma_frac: float) -> np.ndarray:
    """Kornblith et al. 2019: sigma = sigma_frac * sqrt(median of all squared distances)."""
    d2 = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    sigma2 = sigma_frac**2 * np.median(d2)
    return np.exp(-d2 / (2 * sigma2))


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Gretton et al. 2005: ``tr(K H L H) / (n-1)^2``."""
    n = k.shape[0]
    h = centering(n)
    return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. 2012, eq. (5): the unbiased HSIC_1 estimator."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    value = (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    )
    return float(value / (n * (n - 3)))


def cka(k: np.ndarray, l: np.ndarray, debiased: bool = False) -> float:  # noqa: E741
    """Kornblith et al. 2019, eq. (4)."""
    hsic = hsic_unbiased if debiased else hsic_biased
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def linear_cka(x, y, debiased=False) -> float:
    return cka(gram_linear(x), gram_linear(y), debiased)


def _basis(x: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis of the centered column space (data-space SVD with a rank cut)."""
    xc = centering(x.shape[0]) @ x
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    return u[:, s > rtol * s[0]]


def cca(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Hotelling 1936: canonical correlations = cosines of principal angles between the
    centered column spaces (Bjorck & Golub 1973), descending."""
    return np.linalg.svd(_basis(x).T @ _basis(y), compute_uv=False)


def svcca(x: np.ndarray, y: np.ndarray, keep) -> np.ndarray:
    """Raghu et al. 2017: SVD each centered representation, keep the top directions (a count,
    or the fewest explaining a variance fraction), then CCA of the reduced data."""

    def reduce(a):
        ac = centering(a.shape[0]) @ a
        u, s, _ = np.linalg.svd(ac, full_matrices=False)
        if isinstance(keep, int):
            k = min(keep, len(s))
        else:
            frac = np.cumsum(s**2) / np.sum(s**2)
            k = int(np.searchsorted(frac, keep - 1e-12) + 1)
        return u[:, :k] * s[:k]

    return cca(reduce(x), reduce(y))


def pwcca(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Morcos et al. 2018, eq. (2)-(3), read literally (``convention="definition"``): weights
    alpha_i ~ sum_j |<h_i, x_j>| over centered neurons x_j of the side with fewer neurons, h_i
    its unit-norm canonical variates."""
    if x.shape[1] > y.shape[1]:
        x, y = y, x
    xc = centering(x.shape[0]) @ x
    qx, qy = _basis(x), _basis(y)
    u, rhos, _ = np.linalg.svd(qx.T @ qy)
    k = min(qx.shape[1], qy.shape[1])
    rhos = np.concatenate([rhos[:k], np.zeros(qx.shape[1] - k)])
    h = qx @ u[:, : qx.shape[1]]  # unit-norm, mutually orthogonal canonical variates
    alpha = np.sum(np.abs(h.T @ xc), axis=1)
    alpha = alpha / alpha.sum()
    return float(np.sum(alpha * rhos)), rhos, alpha


def procrustes(x: np.ndarray, y: np.ndarray) -> float:
    """Ding et al. 2021: min over orthogonal Q of ||X - Y Q||_F, unit-norm centered X, Y;
    Q from Schoenemann 1966 (SVD of Y^T X)."""
    xc, yc = centering(x.shape[0]) @ x, centering(y.shape[0]) @ y
    xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    d = max(xc.shape[1], yc.shape[1])
    xc = np.pad(xc, ((0, 0), (0, d - xc.shape[1])))
    yc = np.pad(yc, ((0, 0), (0, d - yc.shape[1])))
    u, _, vt = np.linalg.svd(yc.T @ xc)
    return float(np.linalg.norm(xc - yc @ (u @ vt)))


def minibatch_cka(xs, ys, kernel: str = "linear", sigma_frac: float = 0.8) -> float:
    """Nguyen et al. 2021, eq. (3): averaged unbiased HSIC over minibatches."""
    gram = gram_linear if kernel == "linear" else (lambda a: gram_rbf(a, sigma_frac))
    kl = np.mean([hsic_unbiased(gram(x), gram(y)) for x, y in zip(xs, ys, strict=True)])
    kk = np.mean([hsic_unbiased(gram(x), gram(x)) for x in xs])
    ll = np.mean([hsic_unbiased(gram(y), gram(y)) for y in ys])
    return float(kl / np.sqrt(kk * ll))


# ------------------------------------------------------- the authors' released conventions
#
# Written from reading google/svcca (cca_core.get_cca_similarity, pwcca.compute_pwcca and the
# SVCCA recipe of tutorials/001_Introduction.ipynb), in this file's own code: the same
# arithmetic on (examples, neurons) arrays, without that repository.


def _inverse_sqrt(cov: np.ndarray, rcond: float = 1e-15) -> np.ndarray:
    """Symmetric pseudo-inverse square root, as the released code forms it (pinv, then the
    square root of its eigenvalues)."""
    lam, vec = np.linalg.eigh(np.linalg.pinv(cov, rcond=rcond))
    return vec @ np.diag(np.sqrt(np.maximum(lam, 0.0))) @ vec.T


def released_pwcca(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """google/svcca's compute_pwcca with epsilon 0, for ``x (n, dx)``, ``y (n, dy)``.

    Released steps: covariances of the centred data (numpy's cov), each side divided by its
    largest entry; symmetric inverse square roots; the SVD ``u s v`` of ``Sxx^-1/2 Sxy
    Syy^-1/2``; the side with fewer neurons supplies the weights; its "directions" are
    ``u^T (A - m) + m`` (``A`` the raw (neurons, examples) activations, ``m`` their neuron
    means, added back by neuron index), orthonormalised by QR; weights ``sum_j |<q_i, a_j>|``
    over the raw activations ``a_j``, normalised to sum 1; PWCCA = ``sum_i w_i s_i``.

    The released second branch (more neurons in x) raises IndexError. Its fixed, symmetric
    form is the first branch with the arguments swapped: computed here exactly that way, so
    both argument orders give one number.
    """
    if x.shape[1] > y.shape[1]:
        x, y = y, x
    acts_x, acts_y = x.T, y.T  # (neurons, examples), the released layout
    dx = acts_x.shape[0]
    cov = np.cov(acts_x, acts_y)
    sxx, sxy, syy = cov[:dx, :dx], cov[:dx, dx:], cov[dx:, dx:]
    xmax, ymax = np.max(np.abs(sxx)), np.max(np.abs(syy))
    sxx, syy, sxy = sxx / xmax, syy / ymax, sxy / np.sqrt(xmax * ymax)
    u, s, _ = np.linalg.svd(_inverse_sqrt(sxx) @ sxy @ _inverse_sqrt(syy))
    means = acts_x.mean(axis=1, keepdims=True)
    directions = u.T @ (acts_x - means) + means
    q, _ = np.linalg.qr(directions.T)
    weights = np.sum(np.abs(q.T @ acts_x.T), axis=1)
    weights = weights / weights.sum()
    return float(np.sum(weights * s)), s, weights


def released_cca(x: np.ndarray, y: np.ndarray, epsilon: float = 0.0) -> np.ndarray:
    """google/svcca's get_cca_similarity coefficients ("cca_coef1") for ``x (n, dx)``,
    ``y (n, dy)``: the singular values of ``Sxx^-1/2 Sxy Syy^-1/2`` of the max-normalised
    covariances, ``epsilon`` added to their diagonals."""
    dx = x.shape[1]
    cov = np.cov(x.T, y.T)
    sxx, sxy, syy = cov[:dx, :dx], cov[:dx, dx:], cov[dx:, dx:]
    xmax, ymax = np.max(np.abs(sxx)), np.max(np.abs(syy))
    sxx = sxx / xmax + epsilon * np.eye(dx)
    syy = syy / ymax + epsilon * np.eye(syy.shape[0])
    sxy = sxy / np.sqrt(xmax * ymax)
    return np.linalg.svd(_inverse_sqrt(sxx) @ sxy @ _inverse_sqrt(syy), compute_uv=False)


def released_svcca(x: np.ndarray, y: np.ndarray, keep) -> float:
    """The SVCCA recipe of google/svcca's introduction tutorial, then get_cca_similarity with
    epsilon 1e-10, mean of all its coefficients.

    Each (neurons, examples) array is centred per neuron, ``U s V = svd``, the reduced data
    is ``diag(s_k) V_k`` for the top ``k`` directions (a count, as in the tutorial, or the
    fewest reaching a fraction of the variance ``sum s^2``), and the coefficients are the
    singular values of ``Sxx^-1/2 Sxy Syy^-1/2`` of the reduced data.
    """

    def reduce(a):
        acts = a.T
        centred = acts - acts.mean(axis=1, keepdims=True)
        _, s, v = np.linalg.svd(centred, full_matrices=False)
        if isinstance(keep, int):
            k = keep
        else:
            frac = np.cumsum(s**2) / np.sum(s**2)
            k = int(np.searchsorted(frac, keep) + 1)
        return (s[:k, None] * v[:k]), k

    rx, _ = reduce(x)
    ry, _ = reduce(y)
    return float(np.mean(released_cca(rx.T, ry.T, epsilon=1e-10)))


def relu_case(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Issue 15's case: ReLU outputs with non-zero means, x (400, 10), y (400, 16)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((400, 6))
    x = np.maximum(z @ rng.standard_normal((6, 10)) + 0.5 * rng.standard_normal((400, 10))
                   + 0.3, 0)
    y = np.maximum(z @ rng.standard_normal((6, 16)) + 0.5 * rng.standard_normal((400, 16))
                   - 0.2, 0)
    return x, y
