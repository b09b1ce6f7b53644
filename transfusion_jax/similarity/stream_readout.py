"""Reading similarities off streamed moments (`streaming.StreamStats`); pure functions.

Shared by `streaming` (one set of stats) and `resample` (replicates on a leading axis, these
functions vmapped over it). The stats hold, per item, sums of shifted features multiplied by
an exact power of two (`scale`); CKA is read in those units, covariances for the CCA family in
the activations' own (exact: the factors are powers of two).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.similarity import cca_core as cca_lib
from transfusion_jax.similarity import cka as cka_lib
from transfusion_jax.similarity import compensated as comp
from transfusion_jax.similarity import eigh as eigh_lib
from transfusion_jax.similarity import pwcca_core as pwcca_lib
from transfusion_jax.similarity import svcca_core as svcca_lib

CCA_METHODS = ("cca", "svcca", "pwcca")


def bucket_rows(spec) -> list[tuple[np.ndarray, ...]]:
    """Per bucket of `StreamSpec.buckets`: block indices and both items' group rows and
    global indices, as arrays ``(ks, li, lj, i, j)`` of shape ``(Q_b,)``."""
    out = []
    for rows in spec.buckets().values():
        ks = np.asarray([r[0] for r in rows])
        pairs = np.asarray([spec.blocks[k] for k in ks]).reshape(-1, 2)
        out.append((ks, np.asarray([r[1] for r in rows]), np.asarray([r[2] for r in rows]),
                    pairs[:, 0], pairs[:, 1]))
    return out


def num_examples(stats) -> jax.Array:
    """``n``: the weighted number of examples, in the stats' dtype."""
    return comp.value(stats.weight)


def centered_buckets(stats, spec, *,
                     unscale: bool = False) -> list[jax.Array]:
    """Per bucket: centered cross-products ``X_i^T X_j`` of its blocks, ``(Q_b, d_i, d_j)``.

    In the scaled units of the stats, or, with `unscale`, in the activations' own (the scales
    are powers of two, so either is exact). Vectorised over the blocks of a bucket, so the
    program grows with the number of width pairs, not with the number of item pairs.
    """
    n = num_examples(stats)
    means = [comp.value(t) / n for t in stats.total]
    out = []
    for acc, (gi, gj), (_, li, lj, _, _) in zip(stats.cross, spec.buckets(), bucket_rows(spec),
                                               strict=True):
        block = comp.value(acc) - n * means[gi][li][:, :, None] * means[gj][lj][:, None, :]
        if unscale:
            block = block / (stats.scale[gi][li][:, None, None]
                             * stats.scale[gj][lj][:, None, None])
        out.append(block)
    return out


def item_means(stats) -> tuple:
    """Per group ``(P_g, d_g)``: each item's feature means in the activations' units."""
    n = num_examples(stats)
    return tuple(s + comp.value(t) / (n * f[:, None])
                 for s, t, f in zip(stats.shift, stats.total, stats.scale, strict=True))


def _debiased_hsic_bucket(stats, groups: tuple[int, int], acc, rows) -> jax.Array:
    """``n (n-3) HSIC_1`` (Song et al. 2012) of every block of one bucket, ``(Q_b,)``, from
    shifted raw moments.

    With ``K~``, ``L~`` the linear Grams with zeroed diagonals, ``a, b`` squared row norms and
    ``s`` feature sums: ``tr(K~ L~) = ||X^T Y||^2 - <a, b>``, ``1^T K~ 1 = ||s_x||^2 - sum a``
    and ``1^T K~ L~ 1 = s_x^T X^T Y s_y - <A^T Y, s_y> - <B^T X, s_x> + <a, b>``.
    """
    n = num_examples(stats)
    gi, gj = groups
    _, li, lj, i, j = rows
    m = comp.value(acc)  # (Q, d_i, d_j)
    si, sj = comp.value(stats.total[gi])[li], comp.value(stats.total[gj])[lj]
    row_dot, row_sum = comp.value(stats.row_dot), comp.value(stats.row_sum)
    aa = row_dot[i, j]
    af_ij = comp.value(stats.row_feat[gj])[i, lj]  # sum_r a_ir y_r, (Q, d_j)
    af_ji = comp.value(stats.row_feat[gi])[j, li]  # sum_r b_r x_r, (Q, d_i)
    trace = jnp.sum(m * m, axis=(1, 2)) - aa
    ones_k = jnp.sum(si * si, axis=1) - row_sum[i]
    ones_l = jnp.sum(sj * sj, axis=1) - row_sum[j]
    cross = (jnp.einsum("qi,qij,qj->q", si, m, sj) - jnp.sum(af_ij * sj, axis=1)
             - jnp.sum(af_ji * si, axis=1) + aa)
    return trace + (ones_k / (n - 1)) * (ones_l / (n - 2)) - 2.0 / (n - 2) * cross


def linear_cka_values(stats, *, spec, debiased: bool) -> jax.Array:
    """``(Q,)`` linear CKA of the spec's pairs (pure; `linear_cka` is the checked front end)."""
    h = jnp.zeros((len(spec.blocks),), stats.shift[0].dtype)
    buckets = list(spec.buckets())
    centered = None if debiased else centered_buckets(stats, spec)
    for b, rows in enumerate(bucket_rows(spec)):
        if debiased:
            values = _debiased_hsic_bucket(stats, buckets[b], stats.cross[b], rows)
        else:
            values = jnp.sum(jnp.square(centered[b]), axis=(1, 2))
        h = h.at[rows[0]].set(values)
    index = spec.block_index()
    xy = h[np.asarray([index[p] for p in spec.pairs])]
    xx = h[np.asarray([index[(i, i)] for i, _ in spec.pairs])]
    yy = h[np.asarray([index[(j, j)] for _, j in spec.pairs])]
    return cka_lib.cka_ratio(xy, xx, yy)


def cca_values(stats, epsilon, rtol, *, spec, method: str, keep, only: tuple[int, ...],
               convention: str) -> jax.Array:
    """``(Q,)`` mean CCA / SVCCA / PWCCA of the pair numbers `only` (NaN elsewhere).

    Each item's covariance is decomposed once (`eigh.eigh_descending_many`: one matrix per
    call on CPU) and shared by every pair it takes part in; per pair only the whitened
    cross-covariance's decomposition remains (looped over the pairs of each width pair).

    Args:
      stats: stream stats; spec: its spec.
      epsilon, rtol: ridge and relative rank cut (arrays).
      method: one of `CCA_METHODS`.
      keep: SVCCA's variance fraction or number of directions.
      only: pair numbers to compute.
      convention: PWCCA's ``'released'`` or ``'definition'``.
    """
    n = num_examples(stats)
    centered = centered_buckets(stats, spec, unscale=True)
    means = item_means(stats)
    where = {}  # block (i, j) -> (bucket, row)
    for b, (ks, *_) in enumerate(bucket_rows(spec)):
        for q, k in enumerate(ks):
            where[spec.blocks[k]] = (b, q)

    def gather(blocks):
        b = where[blocks[0]][0]
        return centered[b][np.asarray([where[k][1] for k in blocks])] / (n - 1)

    # Per width: the covariances, means and descending eigendecompositions of its items.
    items = sorted({i for q in only for i in spec.pairs[q]})
    by_width: dict = {}
    for i in items:
        by_width.setdefault(spec.layout.item_width(i), []).append(i)
    slot = {}  # item -> (width, row)
    per_width = {}
    for width, its in by_width.items():
        covs = gather([(i, i) for i in its])
        located = [spec.layout.locate(i) for i in its]
        mean = means[located[0][0]][np.asarray([r for _, r in located])]
        eig = eigh_lib.eigh_descending_many(covs)  # one matrix per call on CPU
        per_width[width] = (covs, mean, eig)
        slot.update({i: (width, r) for r, i in enumerate(its)})

    def side(items_of_pairs):
        width = slot[items_of_pairs[0]][0]
        rows = np.asarray([slot[i][1] for i in items_of_pairs])
        covs, mean, (lam, vec) = per_width[width]
        return covs[rows], mean[rows], (lam[rows], vec[rows])

    def one(args):
        sxx, syy, sxy, mean_x, mean_y, eig_x, eig_y = args
        if method == "cca":
            return cca_lib.cca_from_eig(eig_x, eig_y, sxy, epsilon, rtol).mean
        if method == "svcca":
            return svcca_lib.svcca_from_eig(eig_x, eig_y, sxy, keep, rtol).mean
        moments = None
        if convention == "released":
            moments = pwcca_lib.Moments(sxx, syy, mean_x, mean_y, n)
        return pwcca_lib.pwcca_from_eig(eig_x, eig_y, sxy, epsilon, rtol, moments).mean

    out = jnp.full((len(spec.pairs),), jnp.nan, stats.shift[0].dtype)
    by_bucket: dict = {}
    for q in only:
        by_bucket.setdefault(where[spec.pairs[q]][0], []).append(q)
    for qs in by_bucket.values():
        pairs = [spec.pairs[q] for q in qs]
        sxx, mean_x, eig_x = side([i for i, _ in pairs])
        syy, mean_y, eig_y = side([j for _, j in pairs])
        out = out.at[np.asarray(qs)].set(
            jax.lax.map(one, (sxx, syy, gather(pairs), mean_x, mean_y, eig_x, eig_y)))
    return out
