"""Exact streaming accumulators: full-data linear CKA and CCA covariances from batches.

Feed batches of examples of C checkpoints x L layers (``(C, L, b, d)`` or a list over layers
of ``(C, b, d_l)``, the same format as `batched`) and read off, for chosen item pairs, exactly
the values the in-memory functions give on all examples at once:

* linear CKA (Kornblith et al. 2019), biased, or debiased with the unbiased HSIC of Song et
  al. 2012 evaluated from raw moments (that estimator is invariant to shifting the features,
  so the moments need no centering pass);
* the covariance blocks ``S_xx, S_yy, S_xy`` for CCA / SVCCA / PWCCA.

Precision: every example is first shifted by a per-feature reference (the first batch's mean),
so the moments stay near the centered ones, and all sums are compensated (`compensated`), or
kept in float64 when ``jax_enable_x64`` is on. Memory is ``sum over blocks of d_i d_j`` for the
requested pairs plus their self blocks (times two for the compensation).

Usage::

    spec = streaming.StreamSpec.create(first_batch, pairs=batched.reference_pairs(C, L))
    stats = streaming.init(spec, first_batch)
    for batch in batches:                       # including first_batch
        stats = streaming.update(stats, batch, spec=spec)
    cka = streaming.linear_cka(stats, spec=spec)            # (Q,)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.similarity import cca_core as cca_lib
from transfusion_jax.similarity import cka as cka_lib
from transfusion_jax.similarity import compensated as comp
from transfusion_jax.similarity import layout as layout_lib
from transfusion_jax.similarity import pwcca_core as pwcca_lib
from transfusion_jax.similarity import svcca_core as svcca_lib
from transfusion_jax.similarity import validation
from transfusion_jax.similarity.precision import full_precision


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """Static description of what a stream accumulates (hashable; a ``jit`` static arg).

    Attributes:
      layout: the C x L items.
      pairs: requested ``(i, j)`` item pairs.
      blocks: cross-product blocks kept: the pairs plus each involved item with itself.
      debiased: also keep the moments the debiased HSIC needs.
    """

    layout: layout_lib.ItemLayout
    pairs: tuple[tuple[int, int], ...]
    blocks: tuple[tuple[int, int], ...]
    debiased: bool

    @classmethod
    def create(
        cls, example: layout_lib.Activations, *, pairs=None, debiased: bool = True
    ) -> StreamSpec:
        """Spec for batches shaped like `example`; `pairs` default: every pair ``i <= j``."""
        layout = layout_lib.layout_of(example)
        p = layout.num_items
        if pairs is None:
            i, j = np.triu_indices(p)
            pairs = np.stack([i, j], axis=1)
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if pairs.size and (pairs.min() < 0 or pairs.max() >= p):
            raise ValueError(f"pair indices must lie in [0, {p}).")
        pair_t = tuple((int(a), int(b)) for a, b in pairs)
        selfs = tuple((int(a), int(a)) for a in np.unique(pairs))
        blocks = tuple(dict.fromkeys(pair_t + selfs))
        return cls(layout, pair_t, blocks, debiased)

    def buckets(self) -> dict:
        """Blocks grouped by ``(group_i, group_j)``: list of ``(block index, li, lj)``."""
        out: dict = {}
        for k, (i, j) in enumerate(self.blocks):
            gi, li = self.layout.locate(i)
            gj, lj = self.layout.locate(j)
            out.setdefault((gi, gj), []).append((k, li, lj))
        return out

    def block_index(self) -> dict:
        return {b: k for k, b in enumerate(self.blocks)}


class StreamStats(NamedTuple):
    """Accumulated moments (a pytree). Items are shifted by `shift` before accumulation.

    Attributes:
      count: number of examples seen.
      shift: per group ``(P_g, d_g)``.
      total: per group, compensated ``(P_g, d_g)`` sums of shifted features.
      cross: per bucket of `StreamSpec.buckets`, compensated ``(Q_b, d_i, d_j)`` products.
      row_dot: compensated ``(P, P)`` ``sum_r a_ir a_jr`` of squared shifted row norms.
      row_sum: compensated ``(P,)`` ``sum_r a_ir``.
      row_feat: per group, compensated ``(P, P_g, d_g)`` ``sum_r a_ir x_jr``.
    """

    count: jax.Array
    shift: tuple
    total: tuple
    cross: tuple
    row_dot: comp.Compensated
    row_sum: comp.Compensated
    row_feat: tuple


def init(spec: StreamSpec, first_batch: layout_lib.Activations) -> StreamStats:
    """Empty stats whose shift is the mean of `first_batch` (which must still be added)."""
    dtype = validation.compute_dtype(*jax.tree.leaves(first_batch))
    groups = layout_lib.to_groups(first_batch, spec.layout, dtype)
    shift = tuple(jnp.mean(g, axis=1) for g in groups)
    p = spec.layout.num_items
    cross = []
    for (gi, gj), rows in spec.buckets().items():
        cross.append(comp.zeros((len(rows), groups[gi].shape[2], groups[gj].shape[2]), dtype))
    nd = 1 if spec.debiased else 0  # keep the pytree small when not debiased
    return StreamStats(
        count=jnp.zeros((), jnp.int32),
        shift=shift,
        total=tuple(comp.zeros(s.shape, dtype) for s in shift),
        cross=tuple(cross),
        row_dot=comp.zeros((p * nd, p * nd), dtype),
        row_sum=comp.zeros((p * nd,), dtype),
        row_feat=tuple(comp.zeros((p * nd, *s.shape), dtype) for s in shift),
    )


@partial(jax.jit, static_argnames=("spec",), donate_argnums=(0,))
def _update(stats: StreamStats, groups, *, spec: StreamSpec) -> StreamStats:
    dtype = stats.shift[0].dtype
    gs = [g.astype(dtype) - s[:, None, :] for g, s in zip(groups, stats.shift, strict=True)]
    total = tuple(comp.add(t, jnp.sum(g, axis=1)) for t, g in zip(stats.total, gs, strict=True))
    cross = []
    for acc, ((gi, gj), rows) in zip(stats.cross, spec.buckets().items(), strict=True):
        li = np.asarray([r[1] for r in rows])
        lj = np.asarray([r[2] for r in rows])
        cross.append(comp.add(acc, jnp.einsum("qbi,qbj->qij", gs[gi][li], gs[gj][lj])))
    row_dot, row_sum, row_feat = stats.row_dot, stats.row_sum, stats.row_feat
    if spec.debiased:
        inverse = np.argsort(spec.layout.item_order())
        a = jnp.concatenate([jnp.sum(g * g, axis=2) for g in gs], axis=0)[inverse]  # (P, b)
        row_dot = comp.add(row_dot, a @ a.T)
        row_sum = comp.add(row_sum, jnp.sum(a, axis=1))
        row_feat = tuple(comp.add(f, jnp.einsum("pb,qbd->pqd", a, g))
                         for f, g in zip(row_feat, gs, strict=True))
    count = stats.count + gs[0].shape[1]
    return StreamStats(count, stats.shift, total, tuple(cross), row_dot, row_sum, row_feat)


@full_precision
def update(
    stats: StreamStats, batch: layout_lib.Activations, *, spec: StreamSpec, check: bool = True
) -> StreamStats:
    """Adds a batch of examples (same items and widths as the spec, any batch size).

    Args:
      stats: current stats (donated: do not reuse the old value).
      batch: ``(C, L, b, d)`` or a list over layers of ``(C, b, d_l)``.
      spec: the stream's `StreamSpec`.
      check: raise on NaN/inf in the batch (checked on the batch's own device, see
        `validation.all_finite`: one scalar per leaf comes back, not the batch).

    Returns:
      Updated stats.
    """
    if layout_lib.layout_of(batch) != spec.layout:
        raise ValueError(
            f"batch layout {layout_lib.layout_of(batch)} does not match the stream's "
            f"{spec.layout}."
        )
    if check:
        for leaf in jax.tree.leaves(batch):
            if validation.is_concrete(leaf) and not validation.all_finite(leaf):
                raise validation.SimilarityInputError(
                    "a streamed batch contains NaN or inf activations; the similarity of "
                    "non-finite activations is undefined."
                )
    groups = layout_lib.to_groups(batch, spec.layout, stats.shift[0].dtype)
    return _update(stats, groups, spec=spec)


def _bucket_rows(spec: StreamSpec) -> list[tuple[np.ndarray, ...]]:
    """Per bucket of `StreamSpec.buckets`: block indices and both items' group rows and
    global indices, as arrays ``(ks, li, lj, i, j)`` of shape ``(Q_b,)``."""
    out = []
    for rows in spec.buckets().values():
        ks = np.asarray([r[0] for r in rows])
        pairs = np.asarray([spec.blocks[k] for k in ks]).reshape(-1, 2)
        out.append((ks, np.asarray([r[1] for r in rows]), np.asarray([r[2] for r in rows]),
                    pairs[:, 0], pairs[:, 1]))
    return out


def _centered_buckets(stats: StreamStats, spec: StreamSpec) -> list[jax.Array]:
    """Per bucket: centered cross-products ``X_i^T X_j`` of its blocks, ``(Q_b, d_i, d_j)``.

    Vectorised over the blocks of a bucket, so the program grows with the number of width
    pairs, not with the number of item pairs.
    """
    n = stats.count.astype(stats.shift[0].dtype)
    means = [comp.value(t) / n for t in stats.total]
    out = []
    for acc, (gi, gj), (_, li, lj, _, _) in zip(stats.cross, spec.buckets(), _bucket_rows(spec),
                                               strict=True):
        out.append(comp.value(acc) - n * means[gi][li][:, :, None] * means[gj][lj][:, None, :])
    return out


def _centered_blocks(stats: StreamStats, spec: StreamSpec) -> dict:
    """Per block ``(i, j)``: the centered cross-product ``X_i^T X_j`` over all examples."""
    out = {}
    for centered, (ks, *_) in zip(_centered_buckets(stats, spec), _bucket_rows(spec),
                                  strict=True):
        for q, k in enumerate(ks):
            out[spec.blocks[k]] = centered[q]
    return out


def _debiased_hsic_bucket(stats: StreamStats, spec: StreamSpec, groups: tuple[int, int],
                          acc, rows) -> jax.Array:
    """``n (n-3) HSIC_1`` (Song et al. 2012) of every block of one bucket, ``(Q_b,)``, from
    shifted raw moments.

    With ``K~``, ``L~`` the linear Grams with zeroed diagonals, ``a, b`` squared row norms and
    ``s`` feature sums: ``tr(K~ L~) = ||X^T Y||^2 - <a, b>``, ``1^T K~ 1 = ||s_x||^2 - sum a``
    and ``1^T K~ L~ 1 = s_x^T X^T Y s_y - <A^T Y, s_y> - <B^T X, s_x> + <a, b>``.
    """
    n = stats.count.astype(stats.shift[0].dtype)
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
    return trace + ones_k * ones_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross


@partial(jax.jit, static_argnames=("spec", "debiased"))
def _linear_cka(stats: StreamStats, *, spec: StreamSpec, debiased: bool):
    h = jnp.zeros((len(spec.blocks),), stats.shift[0].dtype)
    buckets = list(spec.buckets())
    centered = None if debiased else _centered_buckets(stats, spec)
    for b, rows in enumerate(_bucket_rows(spec)):
        if debiased:
            values = _debiased_hsic_bucket(stats, spec, buckets[b], stats.cross[b], rows)
        else:
            values = jnp.sum(jnp.square(centered[b]), axis=(1, 2))
        h = h.at[rows[0]].set(values)
    index = spec.block_index()
    xy = h[np.asarray([index[p] for p in spec.pairs])]
    xx = h[np.asarray([index[(i, i)] for i, _ in spec.pairs])]
    yy = h[np.asarray([index[(j, j)] for _, j in spec.pairs])]
    return cka_lib._safe_ratio(xy, xx * yy)


def _check_count(stats: StreamStats, minimum: int, what: str) -> None:
    if validation.is_concrete(stats.count) and int(stats.count) < minimum:
        raise validation.SimilarityInputError(
            f"the stream has seen {int(stats.count)} examples; {what} needs at least {minimum}."
        )


@full_precision
def linear_cka(stats: StreamStats, *, spec: StreamSpec, debiased: bool = False) -> jax.Array:
    """Full-data linear CKA (Kornblith et al. 2019) of every pair of the spec: ``(Q,)``.

    Raises:
      SimilarityInputError: too few examples, or ``debiased`` on a spec built without it.
    """
    if debiased and not spec.debiased:
        raise ValueError("this stream was created with debiased=False; recreate its spec.")
    _check_count(stats, 4 if debiased else 2, "debiased CKA" if debiased else "CKA")
    return _linear_cka(stats, spec=spec, debiased=debiased)


def covariance_blocks(stats: StreamStats, *, spec: StreamSpec, pair: int):
    """``(S_xx, S_yy, S_xy)`` over ``n - 1`` of pair number `pair` of the spec."""
    _check_count(stats, 2, "a covariance")
    blocks = _centered_blocks(stats, spec)
    i, j = spec.pairs[pair]
    n = stats.count.astype(stats.shift[0].dtype)
    return blocks[(i, i)] / (n - 1), blocks[(j, j)] / (n - 1), blocks[(i, j)] / (n - 1)


@partial(jax.jit, static_argnames=("spec", "method", "keep", "only"))
def _cca_values(stats, epsilon, rtol, *, spec, method, keep, only):
    """Every pair's mean canonical correlation, looped (`lax.map`) over the pairs of each
    width pair."""
    n = stats.count.astype(stats.shift[0].dtype)
    centered = _centered_buckets(stats, spec)
    where = {}  # block (i, j) -> (bucket, row)
    for b, (ks, *_) in enumerate(_bucket_rows(spec)):
        for q, k in enumerate(ks):
            where[spec.blocks[k]] = (b, q)

    def one(sxx, syy, sxy):
        if method == "cca":
            return cca_lib.cca_from_cov(sxx, syy, sxy, epsilon, rtol).mean
        if method == "svcca":
            return svcca_lib.svcca_from_cov(sxx, syy, sxy, keep=keep, rtol=rtol).mean
        return pwcca_lib.pwcca_from_cov(sxx, syy, sxy, epsilon, rtol).mean

    def gather(blocks):
        b = where[blocks[0]][0]
        return centered[b][np.asarray([where[k][1] for k in blocks])] / (n - 1)

    out = jnp.full((len(spec.pairs),), jnp.nan, stats.shift[0].dtype)
    by_bucket: dict = {}
    for q in only:
        by_bucket.setdefault(where[spec.pairs[q]][0], []).append(q)
    for qs in by_bucket.values():
        pairs = [spec.pairs[q] for q in qs]
        sxx = gather([(i, i) for i, _ in pairs])
        syy = gather([(j, j) for _, j in pairs])
        sxy = gather(pairs)
        # lax.map, not vmap: one compiled body looped over the pairs (a batched eigh of
        # many small matrices was far slower here, and unrolling grows the program).
        out = out.at[np.asarray(qs)].set(jax.lax.map(lambda a: one(*a), (sxx, syy, sxy)))
    return out


@full_precision
def cca_similarity(
    stats: StreamStats,
    *,
    spec: StreamSpec,
    method: str = "svcca",
    keep: float | int = 0.99,
    epsilon: float = 0.0,
    rtol: float | None = None,
    only: Sequence[int] | None = None,
) -> jax.Array:
    """Full-data ``'cca'`` / ``'svcca'`` / ``'pwcca'`` mean similarity of every pair: ``(Q,)``.

    ``only`` restricts the work to those pair numbers of the spec (the others are NaN):
    CCA-family similarities cost an eigendecomposition per pair, CKA only a sum.
    """
    if method not in ("cca", "svcca", "pwcca"):
        raise ValueError(f"method must be 'cca', 'svcca' or 'pwcca'; got {method!r}.")
    _check_count(stats, 2, "a covariance")
    dtype = stats.shift[0].dtype
    if rtol is None:
        rtol = cca_lib.default_rtol(max(spec.layout.widths), dtype)
    return _cca_values(stats, jnp.asarray(epsilon, dtype), jnp.asarray(rtol, dtype), spec=spec,
                       method=method, keep=keep,
                       only=tuple(range(len(spec.pairs))) if only is None else tuple(only))
