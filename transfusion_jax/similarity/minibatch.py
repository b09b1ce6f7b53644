"""Minibatch CKA: averaged unbiased HSIC over minibatches (Nguyen, Raghu, Kornblith 2021).

Nguyen, Raghu, Kornblith 2021, "Do Wide and Deep Networks Learn the Same Things?" (ICLR),
eq. (2)-(3): ``CKA_mb = mean_k HSIC_1(K_k, L_k) / sqrt(mean_k HSIC_1(K_k, K_k) mean_k
HSIC_1(L_k, L_k))`` with ``HSIC_1`` the unbiased estimator of Song et al. 2012 on each
minibatch ``k``. Because ``HSIC_1`` is unbiased, the average converges to the population HSIC
for any batch size ``>= 4``; this is not the full-data CKA (see `streaming` for that) but it
works for any kernel, here linear or RBF. For RBF the bandwidth is ``sigma_frac`` times the
median distance within each minibatch (Kornblith et al. 2019's rule applied per batch), or a
fixed ``sigma`` when given.

Every pair of the ``P = C * L`` items is accumulated at once: per minibatch, each item's Gram
matrix is U-centered and one ``(P, b^2) x (b^2, P)`` product gives all ``P^2`` HSICs.

Scale: for the linear kernel each item is multiplied by an exact power of two fixed on the
first minibatch (the same for every later one, so the average of HSICs is unchanged up to a
constant per item, which cancels in CKA), keeping its fourth-power moments inside the float
range. RBF kernels lie in ``[0, 1]`` whatever the scale.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.similarity import cka as cka_lib
from transfusion_jax.similarity import compensated as comp
from transfusion_jax.similarity import interop, validation
from transfusion_jax.similarity import layout as layout_lib
from transfusion_jax.similarity import scale as scale_lib
from transfusion_jax.similarity.precision import full_precision

KERNELS = ("linear", "rbf")


class MinibatchStats(NamedTuple):
    """Sum over minibatches of ``HSIC_1`` for every item pair, and the number of batches.

    Attributes:
      hsic: compensated ``(P, P)`` sums.
      num_batches: ``()`` minibatches seen.
      scale: ``(P,)`` power-of-two factor applied to each item (linear kernel), fixed on
        the first minibatch; 0 until then.
    """

    hsic: comp.Compensated
    num_batches: jax.Array
    scale: jax.Array


def init(layout: layout_lib.ItemLayout, dtype=jnp.float32) -> MinibatchStats:
    """Empty stats for the items of `layout` (see `layout.layout_of`)."""
    p = layout.num_items
    return MinibatchStats(comp.zeros((p, p), dtype), jnp.zeros((), jnp.int32),
                          jnp.zeros((p,), dtype))


def _grams(g: jax.Array, kernel: str, sigma_frac, sigma) -> jax.Array:
    """``(P_g, b, d) -> (P_g, b, b)`` kernel matrices."""
    if kernel == "linear":
        return jnp.einsum("pid,pjd->pij", g, g)
    if sigma is None:
        return jax.vmap(lambda x: cka_lib.gram_rbf(x, sigma_frac))(g)
    xc = g - jnp.mean(g, axis=1, keepdims=True)
    sq = jnp.sum(xc * xc, axis=2)
    dist = jnp.maximum(sq[:, :, None] + sq[:, None, :] - 2 * jnp.einsum("pid,pjd->pij", xc, xc),
                       0.0)
    return jnp.exp(-dist / (2.0 * sigma**2))


@partial(jax.jit, static_argnames=("layout", "kernel", "fixed_sigma"), donate_argnums=(0,))
def _update(stats, groups, sigma_frac, sigma, *, layout, kernel, fixed_sigma):
    b = groups[0].shape[1]
    order = layout.item_order()  # global item of each row of the concatenated groups
    scale = stats.scale
    if kernel == "linear":
        first = jnp.concatenate([
            scale_lib.factor(scale_lib.max_abs(g - jnp.mean(g, axis=1, keepdims=True), (1, 2)),
                             g.dtype) for g in groups])
        scale = jnp.where(stats.num_batches == 0, jnp.zeros_like(scale).at[order].set(first),
                          scale)
    flat, start = [], 0
    for g in groups:
        if kernel == "linear":
            g = g * scale[order[start:start + g.shape[0]]][:, None, None]
        start += g.shape[0]
        grams = _grams(g, kernel, sigma_frac, sigma if fixed_sigma else None)
        u = jax.vmap(partial(cka_lib.center_gram, unbiased=True))(grams)
        flat.append(u.reshape(g.shape[0], -1))
    inverse = np.argsort(order)
    z = jnp.concatenate(flat, axis=0)[inverse]
    hsic = (z @ z.T) / (b * (b - 3.0))  # <U(K), U(L)> = n (n-3) HSIC_1
    return MinibatchStats(comp.add(stats.hsic, hsic), stats.num_batches + 1, scale)


@full_precision
def update(
    stats: MinibatchStats,
    batch: layout_lib.Activations,
    *,
    kernel: str = "linear",
    sigma_frac: float = 0.8,
    sigma: float | None = None,
) -> MinibatchStats:
    """Adds one minibatch ``(C, L, b, d)`` or list over layers of ``(C, b, d_l)``, ``b >= 4``.

    Args:
      stats: current stats (donated).
      batch: the minibatch.
      kernel: ``'linear'`` or ``'rbf'``.
      sigma_frac: RBF bandwidth as a fraction of the in-batch median distance.
      sigma: fixed RBF bandwidth (overrides `sigma_frac`).

    Returns:
      Updated stats.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}; got {kernel!r}.")
    batch = interop.accept_tree(batch)
    layout = layout_lib.layout_of(batch)
    if layout_lib.num_examples(batch) < 4:
        raise validation.SimilarityInputError(
            f"a minibatch has {layout_lib.num_examples(batch)} examples; the unbiased HSIC "
            "(Song et al. 2012) needs at least 4 (it divides by n-3)."
        )
    for leaf in jax.tree.leaves(batch):
        if validation.is_concrete(leaf) and not validation.all_finite(leaf):
            raise validation.SimilarityInputError(
                "a minibatch contains NaN or inf activations; similarity is undefined."
            )
    if stats.scale.shape != (layout.num_items,):
        raise ValueError(f"the minibatch has {layout.num_items} items; these stats hold "
                         f"{stats.scale.shape[0]}.")
    dtype = stats.hsic.hi.dtype
    groups = layout_lib.to_groups(batch, layout, dtype)
    fixed = sigma is not None
    return _update(stats, groups, jnp.asarray(sigma_frac, dtype),
                   jnp.asarray(sigma if fixed else 1.0, dtype), layout=layout, kernel=kernel,
                   fixed_sigma=fixed)


@full_precision
@jax.jit
def cka(stats: MinibatchStats) -> jax.Array:
    """``(P, P)`` minibatch CKA (Nguyen et al. 2021, eq. 3); 0 where a self-HSIC is <= 0."""
    h = comp.value(stats.hsic)
    diag = jnp.diagonal(h)
    return cka_lib.cka_ratio(h, diag[:, None], diag[None, :])
