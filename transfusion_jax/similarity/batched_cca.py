"""Batched CCA / SVCCA / PWCCA over C checkpoints x L layers (see `batched` for the layout).

The CCA family shares each item's covariance eigendecomposition across all pairs it takes
part in; per pair only ``X_i^T X_j`` and a small SVD/eigh remain.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.similarity import cca_core as cca_lib
from transfusion_jax.similarity import eigh as eigh_lib
from transfusion_jax.similarity import layout as layout_lib
from transfusion_jax.similarity import pwcca_core as pwcca_lib
from transfusion_jax.similarity import svcca_core as svcca_lib
from transfusion_jax.similarity.batched import (
    Pairs,
    _center,
    _check_pairs,
    _pair_buckets,
    _prepare,
    all_pairs,
    reference_pairs,
)
from transfusion_jax.similarity.precision import full_precision

CCA_METHODS = ("cca", "svcca", "pwcca")


@partial(jax.jit, static_argnames=("layout", "pairs_key", "method", "keep", "convention"))
def _cca_pairs(groups, epsilon, rtol, *, layout, pairs_key, method, keep, convention):
    pairs = np.asarray(pairs_key, dtype=np.int64).reshape(-1, 2)
    means = [jnp.mean(g, axis=1) for g in groups]  # (P_g, d_g)
    groups = _center(groups, rescale=False)  # epsilon is in the activations' units
    n = groups[0].shape[1]
    # Per item, once: covariance and its eigendecomposition.
    covs = [jnp.einsum("pni,pnj->pij", g, g) / (n - 1) for g in groups]
    eig = [eigh_lib.eigh_descending_many(c) for c in covs]
    out = jnp.zeros((len(pairs),), groups[0].dtype)
    for (gi, gj), rows in _pair_buckets(pairs, layout).items():
        q = np.asarray([r[0] for r in rows])
        li = jnp.asarray([r[1] for r in rows], jnp.int32)
        lj = jnp.asarray([r[2] for r in rows], jnp.int32)

        def one(ij, gi=gi, gj=gj):
            i, j = ij
            sxy = groups[gi][i].T @ groups[gj][j] / (n - 1)
            (lx, vx), (ly, vy) = (eig[gi][0][i], eig[gi][1][i]), (eig[gj][0][j], eig[gj][1][j])
            if method == "pwcca":
                moments = None
                if convention == "released":
                    moments = pwcca_lib.Moments(covs[gi][i], covs[gj][j],
                                                means[gi][i], means[gj][j],
                                                jnp.asarray(n, sxy.dtype))
                return pwcca_lib.pwcca_from_eig((lx, vx), (ly, vy), sxy, epsilon, rtol,
                                                moments).mean
            if method == "cca":
                return cca_lib.cca_from_eig((lx, vx), (ly, vy), sxy, epsilon, rtol).mean
            return svcca_lib.svcca_from_eig((lx, vx), (ly, vy), sxy, keep, rtol).mean

        out = out.at[q].set(jax.lax.map(one, (li, lj)))
    return out


@full_precision
def cca_pairs(
    acts: layout_lib.Activations,
    pairs: Pairs,
    *,
    method: str = "svcca",
    keep: float | int = 0.99,
    epsilon: float = 0.0,
    rtol: float | None = None,
    convention: str = "released",
) -> jax.Array:
    """Mean CCA / SVCCA / PWCCA similarity for chosen item pairs, eigendecompositions shared.

    Args:
      acts: ``(C, L, n, d)`` or a list over layers of ``(C, n, d_l)``.
      pairs: ``(Q, 2)`` item indices (``i = c * L + l``).
      method: ``'cca'`` (mean canonical correlation), ``'svcca'`` (Raghu et al. 2017) or
        ``'pwcca'`` (Morcos et al. 2018).
      keep: SVCCA variance fraction or number of directions.
      epsilon: ridge for CCA and PWCCA.
      rtol: relative rank cut; default ``max(d, 100) * eps(dtype)``.
      convention: PWCCA's ``'released'`` (default) or ``'definition'`` (see `pwcca`).

    Returns:
      ``(Q,)`` similarities (the ``mean`` of `cca`, `svcca`, `pwcca`).
    """
    if method not in CCA_METHODS:
        raise ValueError(f"method must be one of {CCA_METHODS}; got {method!r}.")
    if method == "svcca":
        svcca_lib._check_keep(keep)
    pwcca_lib.check_convention(convention)
    layout, groups = _prepare(acts, debiased=False)
    pairs = _check_pairs(pairs, layout.num_items)
    dtype = groups[0].dtype
    if rtol is None:
        rtol = cca_lib.default_rtol(max(layout.widths), dtype)
    key = tuple(map(tuple, pairs.tolist()))
    return _cca_pairs(groups, jnp.asarray(epsilon, dtype), jnp.asarray(rtol, dtype),
                      layout=layout, pairs_key=key, method=method, keep=keep,
                  convention=convention if method == "pwcca" else "")


@full_precision
def cca_matrix(acts: layout_lib.Activations, **kwargs) -> jax.Array:
    """``(P, P)`` symmetric matrix of `cca_pairs` over all pairs ``i <= j``."""
    layout = layout_lib.layout_of(acts)
    pairs = all_pairs(layout.num_items)
    vals = cca_pairs(acts, pairs, **kwargs)
    p = layout.num_items
    m = jnp.zeros((p, p), vals.dtype).at[pairs[:, 0], pairs[:, 1]].set(vals)
    return m.at[pairs[:, 1], pairs[:, 0]].set(vals)


@full_precision
def cca_to_reference(
    acts: layout_lib.Activations, *, reference: int = 0, **kwargs
) -> jax.Array:
    """Per layer, `cca_pairs` of every checkpoint with checkpoint `reference`: ``(C, L)``."""
    layout = layout_lib.layout_of(acts)
    if not 0 <= reference < layout.num_checkpoints:
        raise ValueError(f"reference {reference} is not in [0, {layout.num_checkpoints}).")
    pairs = reference_pairs(layout.num_checkpoints, layout.num_layers, reference)
    return cca_pairs(acts, pairs, **kwargs).reshape(layout.num_checkpoints, layout.num_layers)
