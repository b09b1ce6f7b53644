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


def update(
    stats: StreamStats, batch: layout_lib.Activations, *, spec: StreamSpec, check: bool = True
) -> StreamStats:
    """Adds a batch of examples (same items and widths as the spec, any batch size).

    Args:
      stats: current stats (donated: do not reuse the old value).
      batch: ``(C, L, b, d)`` or a list over layers of ``(C, b, d_l)``.
      spec: the stream's `StreamSpec`.
      check: raise on NaN/inf in the batch (one host transfer per batch).

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
            if validation.is_concrete(leaf) and not np.all(np.isfinite(np.asarray(leaf))):
                raise validation.SimilarityInputError(
                    "a streamed batch contains NaN or inf activations; the similarity of "
                    "non-finite activations is undefined."
                )
    groups = layout_lib.to_groups(batch, spec.layout, stats.shift[0].dtype)
    return _update(stats, groups, spec=spec)


def _raw_blocks(stats: StreamStats, spec: StreamSpec) -> dict:
    """Per block ``(i, j)``: the accumulated shifted cross-product ``X_i^T X_j``."""
    out = {}
    for acc, rows in zip(stats.cross, spec.buckets().values(), strict=True):
        total = comp.value(acc)
        for q, (k, _, _) in enumerate(rows):
            out[spec.blocks[k]] = total[q]
    return out


def _centered_blocks(stats: StreamStats, spec: StreamSpec) -> dict:
    """Per block: the centered cross-product ``X_i^T X_j`` over all examples seen."""
    n = stats.count.astype(stats.shift[0].dtype)
    means = [comp.value(t) / n for t in stats.total]
    out = {}
    for (i, j), raw in _raw_blocks(stats, spec).items():
        (gi, li), (gj, lj) = spec.layout.locate(i), spec.layout.locate(j)
        out[(i, j)] = raw - n * jnp.outer(means[gi][li], means[gj][lj])
    return out


def _debiased_hsic(stats: StreamStats, spec: StreamSpec, raw: dict, i: int, j: int):
    """``n (n-3) HSIC_1`` (Song et al. 2012) for items i, j from shifted raw moments.

    With ``K~``, ``L~`` the linear Grams with zeroed diagonals, ``a, b`` squared row norms and
    ``s`` feature sums: ``tr(K~ L~) = ||X^T Y||^2 - <a, b>``, ``1^T K~ 1 = ||s_x||^2 - sum a``
    and ``1^T K~ L~ 1 = s_x^T X^T Y s_y - <A^T Y, s_y> - <B^T X, s_x> + <a, b>``.
    """
    n = stats.count.astype(stats.shift[0].dtype)
    (gi, li), (gj, lj) = spec.layout.locate(i), spec.layout.locate(j)
    m = raw[(i, j)] if (i, j) in raw else raw[(j, i)].T
    si, sj = comp.value(stats.total[gi])[li], comp.value(stats.total[gj])[lj]
    aa = comp.value(stats.row_dot)[i, j]
    sa_i, sa_j = comp.value(stats.row_sum)[i], comp.value(stats.row_sum)[j]
    af_ij = comp.value(stats.row_feat[gj])[i, lj]  # sum_r a_ir y_r
    af_ji = comp.value(stats.row_feat[gi])[j, li]  # sum_r b_r x_r
    trace = jnp.sum(m * m) - aa
    ones_k = jnp.dot(si, si) - sa_i
    ones_l = jnp.dot(sj, sj) - sa_j
    cross = si @ m @ sj - jnp.dot(af_ij, sj) - jnp.dot(af_ji, si) + aa
    return trace + ones_k * ones_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross


@partial(jax.jit, static_argnames=("spec", "debiased"))
def _linear_cka(stats: StreamStats, *, spec: StreamSpec, debiased: bool):
    if debiased:
        raw = _raw_blocks(stats, spec)
        h = {b: _debiased_hsic(stats, spec, raw, *b) for b in spec.blocks}
    else:
        h = {b: jnp.sum(jnp.square(c)) for b, c in _centered_blocks(stats, spec).items()}
    xy = jnp.stack([h[p] for p in spec.pairs])
    xx = jnp.stack([h[(i, i)] for i, _ in spec.pairs])
    yy = jnp.stack([h[(j, j)] for _, j in spec.pairs])
    return cka_lib._safe_ratio(xy, xx * yy)


def _check_count(stats: StreamStats, minimum: int, what: str) -> None:
    if validation.is_concrete(stats.count) and int(stats.count) < minimum:
        raise validation.SimilarityInputError(
            f"the stream has seen {int(stats.count)} examples; {what} needs at least {minimum}."
        )


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


@partial(jax.jit, static_argnames=("spec", "method", "keep"))
def _cca_values(stats, epsilon, rtol, *, spec, method, keep):
    blocks = _centered_blocks(stats, spec)
    n = stats.count.astype(stats.shift[0].dtype)
    out = []
    for i, j in spec.pairs:
        sxx, syy, sxy = (blocks[(i, i)] / (n - 1), blocks[(j, j)] / (n - 1),
                         blocks[(i, j)] / (n - 1))
        if method == "cca":
            out.append(cca_lib.cca_from_cov(sxx, syy, sxy, epsilon, rtol).mean)
        elif method == "svcca":
            out.append(svcca_lib.svcca_from_cov(sxx, syy, sxy, keep=keep, rtol=rtol).mean)
        else:
            out.append(pwcca_lib.pwcca_from_cov(sxx, syy, sxy, epsilon, rtol).mean)
    return jnp.stack(out)


def cca_similarity(
    stats: StreamStats,
    *,
    spec: StreamSpec,
    method: str = "svcca",
    keep: float | int = 0.99,
    epsilon: float = 0.0,
    rtol: float | None = None,
) -> jax.Array:
    """Full-data ``'cca'`` / ``'svcca'`` / ``'pwcca'`` mean similarity of every pair: ``(Q,)``."""
    if method not in ("cca", "svcca", "pwcca"):
        raise ValueError(f"method must be 'cca', 'svcca' or 'pwcca'; got {method!r}.")
    _check_count(stats, 2, "a covariance")
    dtype = stats.shift[0].dtype
    if rtol is None:
        rtol = cca_lib.default_rtol(max(spec.layout.widths), dtype)
    return _cca_values(stats, jnp.asarray(epsilon, dtype), jnp.asarray(rtol, dtype), spec=spec,
                       method=method, keep=keep)
