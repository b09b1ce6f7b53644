"""Exact streaming accumulators: full-data linear CKA and CCA covariances from batches.

Feed batches of examples of C checkpoints x L layers (``(C, L, b, d)`` or a list over layers
of ``(C, b, d_l)``, the same format as `batched`) and read off, for chosen item pairs, exactly
the values the in-memory functions give on all examples at once:

* linear CKA (Kornblith et al. 2019), biased, or debiased with the unbiased HSIC of Song et
  al. 2012 evaluated from raw moments (that estimator is invariant to shifting the features,
  so the moments need no centering pass);
* the covariance blocks ``S_xx, S_yy, S_xy`` and means for CCA / SVCCA / PWCCA
  (`cca_similarity`). The read-out arithmetic is in `stream_readout`.

Precision: every example is first shifted by a per-feature reference (the first batch's mean)
and multiplied by an exact power of two per item (fixed on the first batch, `scale`), so the
moments stay near the centered ones and near 1 whatever the activations' scale; all sums are
compensated (`compensated`), or kept in float64 when ``jax_enable_x64`` is on.

Memory: ``2 x itemsize x (sum over kept blocks of d_i d_j + debiased moments)`` for the
requested pairs plus their self blocks (`StreamSpec.state_bytes`), and as much again while a
batch is added. `init` checks it against the available memory first and raises
`memory.SimilarityMemoryError`, naming the size and what shrinks it, instead of letting the
process be killed.

Every example may carry a weight (`accumulate`): `resample` uses Poisson weights for bootstrap
replicates and per-item permutations for null baselines, from the same code.

Usage::

    spec = streaming.StreamSpec.create(first_batch, pairs=batched.reference_pairs(C, L))
    stats = streaming.init(spec, first_batch)
    for batch in batches:                       # including first_batch
        stats = streaming.update(stats, batch, spec=spec)
    cka = streaming.linear_cka(stats, spec=spec)            # (Q,)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.similarity import cca_core as cca_lib
from transfusion_jax.similarity import compensated as comp
from transfusion_jax.similarity import interop, memory, validation
from transfusion_jax.similarity import layout as layout_lib
from transfusion_jax.similarity import pwcca_core as pwcca_lib
from transfusion_jax.similarity import scale as scale_lib
from transfusion_jax.similarity import stream_readout as readout
from transfusion_jax.similarity import svcca_core as svcca_lib
from transfusion_jax.similarity.precision import full_precision

# While a batch is added, its products for every block and the compensated sums' temporaries
# exist beside the state: the process grew by 2.2-2.4x the state size on CPU (d = 4,096-6,144).
UPDATE_PEAK_FACTOR = 2.5

REMEDIES = (
    "Shrink it: reduce conv maps with reduction='mean_pool' (or 'flatten_positions': d = "
    "channels instead of h*w*channels for 'flatten_all'); compare fewer layers or pairs "
    "(pairs=...); or use a Gram-form estimator, whose memory does not grow with d_i*d_j: "
    "similarity.minibatch (linear or RBF CKA, (C*L)^2 numbers) or, with the activations in "
    "memory, linear_cka_matrix(acts, form='gram').")


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
        """Blocks grouped by ``(group_i, group_j)``: list of ``(block index, li, lj)``
        (computed once per spec: every trace and read-out asks for it)."""
        return _buckets(self)

    def block_index(self) -> dict:
        return {b: k for k, b in enumerate(self.blocks)}

    def state_numbers(self) -> tuple[int, int]:
        """``(sum over blocks of d_i d_j, everything else)``: numbers in one accumulator set
        (each summed twice: compensated)."""
        widths = [self.layout.item_width(i) for i in range(self.layout.num_items)]
        blocks = sum(widths[i] * widths[j] for i, j in self.blocks)
        p, features = len(widths), sum(widths)
        other = 3 * features + p + 4  # shift, total (x2), scale, counters
        if self.debiased:
            other += 2 * (p * p + p + p * features)  # row_dot, row_sum, row_feat
        return blocks, other

    def state_bytes(self, dtype=jnp.float32, replicates: int = 1) -> int:
        """Bytes of `replicates` accumulator sets in `dtype` (see the module docstring)."""
        blocks, other = self.state_numbers()
        return int(replicates * jnp.dtype(dtype).itemsize * (2 * blocks + other))

    def check_memory(self, dtype=jnp.float32, replicates: int = 1, *,
                     limit: int | None = None, what: str = "streaming similarity") -> None:
        """Raises `memory.SimilarityMemoryError` when the state would not fit (see `init`)."""
        blocks, other = self.state_numbers()
        itemsize = jnp.dtype(dtype).itemsize
        needed = int(UPDATE_PEAK_FACTOR * self.state_bytes(dtype, replicates))
        widths = sorted(set(self.layout.widths), reverse=True)[:3]
        formula = (f"state {memory.gib(self.state_bytes(dtype, replicates))} = {replicates} "
                   f"replicate(s) x {itemsize} bytes x (2 x {blocks:,}, the sum over the "
                   f"{len(self.blocks)} kept blocks of d_i*d_j, compensated, + {other:,} other "
                   f"moments), and {UPDATE_PEAK_FACTOR:g}x that while a batch is added; widest "
                   "layers d = " + ", ".join(f"{w:,}" for w in widths))
        memory.check_fits(needed, what=what, formula=formula, remedies=REMEDIES, limit=limit)


@functools.lru_cache(maxsize=16)
def _buckets(spec: StreamSpec) -> dict:
    located = [spec.layout.locate(i) for i in range(spec.layout.num_items)]
    out: dict = {}
    for k, (i, j) in enumerate(spec.blocks):
        (gi, li), (gj, lj) = located[i], located[j]
        out.setdefault((gi, gj), []).append((k, li, lj))
    return out


class StreamStats(NamedTuple):
    """Accumulated moments (a pytree). Items are shifted by `shift` and multiplied by `scale`
    before accumulation; every sum is weighted by the examples' weights (1 by default).

    Attributes:
      count: number of examples (rows) seen.
      weight: compensated sum of the examples' weights: the ``n`` of every formula.
      batches: number of batches added (keys the resampling of `resample`).
      shift: per group ``(P_g, d_g)``.
      scale: per group ``(P_g,)`` powers of two.
      total: per group, compensated ``(P_g, d_g)`` sums of shifted features.
      cross: per bucket of `StreamSpec.buckets`, compensated ``(Q_b, d_i, d_j)`` products.
      row_dot: compensated ``(P, P)`` ``sum_r a_ir a_jr`` of squared shifted row norms.
      row_sum: compensated ``(P,)`` ``sum_r a_ir``.
      row_feat: per group, compensated ``(P, P_g, d_g)`` ``sum_r a_ir x_jr``.
    """

    count: jax.Array
    weight: comp.Compensated
    batches: jax.Array
    shift: tuple
    scale: tuple
    total: tuple
    cross: tuple
    row_dot: comp.Compensated
    row_sum: comp.Compensated
    row_feat: tuple


def reference(spec: StreamSpec, first_batch: layout_lib.Activations) -> tuple[tuple, tuple]:
    """Per group, the shift (mean of `first_batch`) and the power-of-two scale of each item.

    The scale brings the item's largest shifted magnitude in the first batch (its largest
    magnitude, for a one-example batch) into ``[0.5, 1)``.
    """
    first_batch = interop.accept_tree(first_batch)
    dtype = validation.compute_dtype(*jax.tree.leaves(first_batch))
    return _reference(first_batch, layout=spec.layout, dtype=dtype)


@partial(jax.jit, static_argnames=("layout", "dtype"))
def _reference(first_batch, *, layout: layout_lib.ItemLayout, dtype) -> tuple[tuple, tuple]:
    """`reference` as one compiled call (eagerly, each small op compiled on its own)."""
    groups = layout_lib.to_groups(first_batch, layout, dtype)
    shift = tuple(jnp.mean(g, axis=1) for g in groups)
    scale = []
    for g, s in zip(groups, shift, strict=True):
        spread = scale_lib.max_abs(g - s[:, None, :], (1, 2))
        size = scale_lib.max_abs(g, (1, 2))
        scale.append(scale_lib.factor(jnp.where(spread > 0, spread, size), dtype))
    return shift, tuple(scale)


def empty(spec: StreamSpec, shift: tuple, scale: tuple) -> StreamStats:
    """Zero stats with the given per-group shift and scale."""
    dtype = shift[0].dtype
    p = spec.layout.num_items
    cross = [comp.zeros((len(rows), shift[gi].shape[1], shift[gj].shape[1]), dtype)
             for (gi, gj), rows in spec.buckets().items()]
    nd = 1 if spec.debiased else 0  # keep the pytree small when not debiased
    return StreamStats(
        count=jnp.zeros((), jnp.int32),
        weight=comp.zeros((), dtype),
        batches=jnp.zeros((), jnp.int32),
        shift=tuple(shift),
        scale=tuple(scale),
        total=tuple(comp.zeros(s.shape, dtype) for s in shift),
        cross=tuple(cross),
        row_dot=comp.zeros((p * nd, p * nd), dtype),
        row_sum=comp.zeros((p * nd,), dtype),
        row_feat=tuple(comp.zeros((p * nd, *s.shape), dtype) for s in shift),
    )


def init(spec: StreamSpec, first_batch: layout_lib.Activations, *,
         memory_limit: int | None = None) -> StreamStats:
    """Empty stats whose shift and scale come from `first_batch` (which must still be added).

    Args:
      spec: the stream's `StreamSpec`.
      first_batch: the first batch, ``(C, L, b, d)`` or a list over layers of ``(C, b, d_l)``.
      memory_limit: bytes the state may use; default: the memory available where JAX
        allocates (host memory on CPU).

    Raises:
      memory.SimilarityMemoryError: the state would not fit (the message names its size,
        formula and the choices that shrink it).
    """
    first_batch = interop.accept_tree(first_batch)
    dtype = validation.compute_dtype(*jax.tree.leaves(first_batch))
    spec.check_memory(dtype, limit=memory_limit)
    return _empty(spec, *reference(spec, first_batch))


# `empty` as one compiled call: the state's zeros made where they live, not op by op.
_empty = jax.jit(empty, static_argnums=(0,))


def accumulate(stats: StreamStats, groups, weights: jax.Array | None, *,
               spec: StreamSpec) -> StreamStats:
    """Adds one batch of grouped items (pure; vmappable over stats and weights).

    Args:
      stats: current stats.
      groups: per group ``(P_g, b, d_g)`` (see `layout.to_groups`).
      weights: ``(b,)`` example weights, or None for 1.
      spec: the stream's spec.
    """
    dtype = stats.shift[0].dtype
    gs = [(g.astype(dtype) - s[:, None, :]) * f[:, None, None]
          for g, s, f in zip(groups, stats.shift, stats.scale, strict=True)]
    gw = gs if weights is None else [g * weights.astype(dtype)[None, :, None] for g in gs]
    total = tuple(comp.add(t, jnp.sum(g, axis=1)) for t, g in zip(stats.total, gw, strict=True))
    cross = []
    for acc, ((gi, gj), rows) in zip(stats.cross, spec.buckets().items(), strict=True):
        li = np.asarray([r[1] for r in rows])
        lj = np.asarray([r[2] for r in rows])
        cross.append(comp.add(acc, jnp.einsum("qbi,qbj->qij", gw[gi][li], gs[gj][lj])))
    row_dot, row_sum, row_feat = stats.row_dot, stats.row_sum, stats.row_feat
    if spec.debiased:
        inverse = np.argsort(spec.layout.item_order())
        a = jnp.concatenate([jnp.sum(g * g, axis=2) for g in gs], axis=0)[inverse]  # (P, b)
        aw = a if weights is None else a * weights.astype(dtype)[None, :]
        row_dot = comp.add(row_dot, aw @ a.T)
        row_sum = comp.add(row_sum, jnp.sum(aw, axis=1))
        row_feat = tuple(comp.add(f, jnp.einsum("pb,qbd->pqd", aw, g))
                         for f, g in zip(row_feat, gs, strict=True))
    b = gs[0].shape[1]
    added = jnp.asarray(b, dtype) if weights is None else jnp.sum(weights.astype(dtype))
    return StreamStats(stats.count + b, comp.add(stats.weight, added), stats.batches + 1,
                       stats.shift, stats.scale, total, tuple(cross), row_dot, row_sum,
                       row_feat)


_update = jax.jit(partial(accumulate, weights=None), static_argnames=("spec",),
                  donate_argnums=(0,))


def check_batch(batch, spec: StreamSpec, *, check: bool = True):
    """The batch as accepted arrays, after checking its layout (and, if `check`, that every
    value is finite)."""
    batch = interop.accept_tree(batch)
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
    return batch


@full_precision
def update(
    stats: StreamStats, batch: layout_lib.Activations, *, spec: StreamSpec, check: bool = True
) -> StreamStats:
    """Adds a batch of examples (same items and widths as the spec, any batch size).

    Args:
      stats: current stats (donated: do not reuse the old value).
      batch: ``(C, L, b, d)`` or a list over layers of ``(C, b, d_l)``.
      spec: the stream's `StreamSpec`.
      check: raise on NaN/inf in the batch (one reduction per array, where it lives).

    Returns:
      Updated stats.
    """
    batch = check_batch(batch, spec, check=check)
    groups = layout_lib.to_groups(batch, spec.layout, stats.shift[0].dtype)
    return _update(stats, groups, spec=spec)


# ------------------------------------------------------------------------- read-out


_linear_cka = jax.jit(readout.linear_cka_values, static_argnames=("spec", "debiased"))


def check_count(stats: StreamStats, minimum: int, what: str) -> None:
    if validation.is_concrete(stats.count) and int(np.min(np.asarray(stats.count))) < minimum:
        raise validation.SimilarityInputError(
            f"the stream has seen {int(np.min(np.asarray(stats.count)))} examples; {what} "
            f"needs at least {minimum}."
        )


@full_precision
def linear_cka(stats: StreamStats, *, spec: StreamSpec, debiased: bool = False) -> jax.Array:
    """Full-data linear CKA (Kornblith et al. 2019) of every pair of the spec: ``(Q,)``.

    Raises:
      SimilarityInputError: too few examples, or ``debiased`` on a spec built without it.
    """
    if debiased and not spec.debiased:
        raise ValueError("this stream was created with debiased=False; recreate its spec.")
    check_count(stats, 4 if debiased else 2, "debiased CKA" if debiased else "CKA")
    return _linear_cka(stats, spec=spec, debiased=debiased)


def covariance_blocks(stats: StreamStats, *, spec: StreamSpec, pair: int):
    """``(S_xx, S_yy, S_xy)`` over ``n - 1`` of pair number `pair` of the spec, in the
    activations' units."""
    check_count(stats, 2, "a covariance")
    n = readout.num_examples(stats)
    blocks = {}
    for centered, (ks, *_) in zip(readout.centered_buckets(stats, spec, unscale=True),
                                  readout.bucket_rows(spec), strict=True):
        for q, k in enumerate(ks):
            blocks[spec.blocks[k]] = centered[q]
    i, j = spec.pairs[pair]
    return blocks[(i, i)] / (n - 1), blocks[(j, j)] / (n - 1), blocks[(i, j)] / (n - 1)


def cca_options(stats: StreamStats, spec: StreamSpec, method: str, keep, epsilon, rtol,
                only, convention) -> tuple:
    """Checked `readout.cca_values` arguments: ``(epsilon, rtol)`` arrays and static kwargs."""
    if method not in readout.CCA_METHODS:
        raise ValueError(f"method must be one of {readout.CCA_METHODS}; got {method!r}.")
    if method == "svcca":
        svcca_lib._check_keep(keep)
    pwcca_lib.check_convention(convention)
    dtype = stats.shift[0].dtype
    if rtol is None:
        rtol = cca_lib.default_rtol(max(spec.layout.widths), dtype)
    only = tuple(range(len(spec.pairs))) if only is None else tuple(int(q) for q in only)
    if any(not 0 <= q < len(spec.pairs) for q in only):
        raise ValueError(f"only must hold pair numbers in [0, {len(spec.pairs)}); got {only}.")
    static = dict(spec=spec, method=method, keep=keep, only=only,
                  convention=convention if method == "pwcca" else "")
    return jnp.asarray(epsilon, dtype), jnp.asarray(rtol, dtype), static


_cca_values = jax.jit(readout.cca_values,
                      static_argnames=("spec", "method", "keep", "only", "convention"))


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
    convention: str = "released",
) -> jax.Array:
    """Full-data ``'cca'`` / ``'svcca'`` / ``'pwcca'`` mean similarity of every pair: ``(Q,)``.

    Args:
      stats: the stream's stats.
      spec: its spec.
      method: ``'cca'`` (mean canonical correlation), ``'svcca'`` or ``'pwcca'``.
      keep: SVCCA variance fraction or number of directions.
      epsilon: ridge for CCA and PWCCA (as in `cca_core.cca`, `pwcca_core.pwcca`).
      rtol: relative rank cut; default ``max(d, 100) * eps(dtype)``.
      only: restricts the work to those pair numbers of the spec (the others are NaN):
        CCA-family similarities cost an eigendecomposition per pair, CKA only a sum.
      convention: PWCCA's ``'released'`` (default) or ``'definition'`` (see `pwcca`).

    Returns:
      ``(Q,)`` similarities, equal to the in-memory functions' on all examples.
    """
    check_count(stats, 2, "a covariance")
    epsilon, rtol, static = cca_options(stats, spec, method, keep, epsilon, rtol, only,
                                        convention)
    return _cca_values(stats, epsilon, rtol, **static)
