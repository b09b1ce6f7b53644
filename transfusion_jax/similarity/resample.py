"""Bootstrap intervals and null baselines for streamed similarities, in the same one pass.

A similarity value alone is easy to misread: unrelated random features of realistic size
score SVCCA around 0.33, and CCA-family values approach 1 as the number of examples
approaches the width. This module accumulates, beside the stream of `streaming`, two sets
of replicate statistics, each a `streaming.StreamStats` with a leading replicate axis updated
by one vmapped call per batch (no loop over replicates):

* **bootstrap** (``B`` replicates): every example gets a Poisson(1) weight per replicate (the
  Poisson bootstrap, Hanley & MacGibbon 2006; Chamandy et al. 2012 for streams: a stream
  cannot draw multinomial counts without knowing ``n``). The weighted moments give, exactly,
  each estimator's value on the resampled examples (a duplicated example counts twice, also
  in the debiased HSIC's diagonal-free sums), so linear CKA (biased and debiased), CCA,
  SVCCA and PWCCA replicates all come from the stream, over every example, no subsample;
* **null** (``K`` replicates): in each batch, every item's examples are permuted
  independently, so each pair compares one representation with an example-shuffled
  counterpart of the other: the value the same estimator gives two unrelated
  representations with the same marginal statistics, widths and ``n`` (the noise floor).
  Self blocks and means are unchanged by a permutation, so only the pairs' cross terms
  differ. The permutations act within a batch: with data in an order related to content
  (sorted by class, say) use batches as large as possible, or shuffle the split first.

``rows_per_example`` keeps the rows of one example together (``flatten_positions``: ``h*w``
rows per image are resampled and permuted as one example).

Cost: ``B + K`` weighted accumulations per batch beside the point stream's one (and memory
``(B + K) x`` its state, checked before allocating); the read-out repeats the point read-out
``B + K`` times (vmapped for CKA, looped with `lax.map` for the CCA family). Restrict
``pairs`` to those a table or figure shows.

Usage::

    spec = resample.ResampleSpec.create(first, pairs=pairs, bootstrap=200, null=50)
    stats = resample.init(spec, first)
    for batch in batches:                     # the same batches as the point stream
        stats = resample.update(stats, batch, spec=spec)
    reps = resample.linear_cka(stats, spec=spec)          # boot (B, Q), null (K, Q)
    summary = intervals.summarize(point, reps)             # value, low, high, null band
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from transfusion_jax.similarity import interop, streaming, validation
from transfusion_jax.similarity import layout as layout_lib
from transfusion_jax.similarity import stream_readout as readout
from transfusion_jax.similarity.precision import full_precision


@dataclasses.dataclass(frozen=True)
class ResampleSpec:
    """What the replicate streams accumulate (hashable; a ``jit`` static argument).

    Attributes:
      stream: the pairs, layout and moments (a `streaming.StreamSpec`).
      bootstrap: number of bootstrap replicates ``B`` (0: none).
      null: number of null replicates ``K`` (0: none).
      rows_per_example: consecutive rows resampled and permuted together.
      seed: the replicates' random seed (batch ``t`` draws from ``fold_in(seed, t)``).
    """

    stream: streaming.StreamSpec
    bootstrap: int
    null: int
    rows_per_example: int
    seed: int

    @classmethod
    def create(cls, example: layout_lib.Activations, *, pairs=None, debiased: bool = False,
               bootstrap: int = 200, null: int = 50, rows_per_example: int = 1,
               seed: int = 0) -> ResampleSpec:
        """Spec for batches shaped like `example` (see `streaming.StreamSpec.create`)."""
        if bootstrap < 0 or null < 0 or bootstrap + null == 0:
            raise ValueError(f"need bootstrap >= 0 and null >= 0 replicates, not both 0; got "
                             f"{bootstrap} and {null}.")
        if rows_per_example < 1:
            raise ValueError(f"rows_per_example must be >= 1; got {rows_per_example}.")
        stream = streaming.StreamSpec.create(example, pairs=pairs, debiased=debiased)
        return cls(stream, int(bootstrap), int(null), int(rows_per_example), int(seed))


class ResampleStats(NamedTuple):
    """Replicate moments: `streaming.StreamStats` with a leading ``(B,)`` / ``(K,)`` axis
    (None when that kind has no replicates)."""

    boot: streaming.StreamStats | None
    null: streaming.StreamStats | None


class Replicates(NamedTuple):
    """Replicate values of a statistic for the spec's ``Q`` pairs.

    Attributes:
      boot: ``(B, Q)`` bootstrap replicates (None without).
      null: ``(K, Q)`` null replicates (None without).
    """

    boot: jax.Array | None
    null: jax.Array | None


def _stacked(stats: streaming.StreamStats, count: int) -> streaming.StreamStats | None:
    if count == 0:
        return None
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (count, *a.shape)), stats)


@partial(jax.jit, static_argnames=("spec",))
def _empty(shift: tuple, scale: tuple, *, spec: ResampleSpec) -> ResampleStats:
    """Zero replicate stats, made in one compiled call (op by op, every leaf of the large
    state was a separate compiled broadcast and copy)."""
    base = streaming.empty(spec.stream, shift, scale)
    return ResampleStats(_stacked(base, spec.bootstrap), _stacked(base, spec.null))


def init(spec: ResampleSpec, first_batch: layout_lib.Activations, *,
         memory_limit: int | None = None) -> ResampleStats:
    """Empty replicate stats, shifted and scaled by `first_batch` (which must still be added).

    Raises:
      memory.SimilarityMemoryError: the ``B + K`` replicate states would not fit.
    """
    first_batch = interop.accept_tree(first_batch)
    dtype = validation.compute_dtype(*jax.tree.leaves(first_batch))
    spec.stream.check_memory(dtype, spec.bootstrap + spec.null, limit=memory_limit,
                             what=f"{spec.bootstrap} bootstrap + {spec.null} null replicates")
    return _empty(*streaming.reference(spec.stream, first_batch), spec=spec)


def batch_draws(spec: ResampleSpec, batch_index: jax.Array | int, rows: int):
    """The random draws of batch number `batch_index` with `rows` rows.

    Returns:
      ``weights (B, rows)``: Poisson(1) counts, equal over each example's rows;
      ``order (K, P, rows)``: per null replicate and item, the row order (a permutation of
      whole examples).
    """
    per, examples = spec.rows_per_example, rows // spec.rows_per_example
    key = jax.random.fold_in(jax.random.PRNGKey(spec.seed), batch_index)
    kb, kn = jax.random.split(key)
    weights = jax.random.poisson(kb, 1.0, (spec.bootstrap, examples))
    weights = jnp.repeat(weights, per, axis=1)
    p = spec.stream.layout.num_items
    perm = jnp.argsort(jax.random.uniform(kn, (spec.null, p, examples)), axis=-1)
    order = (perm[..., :, None] * per + jnp.arange(per)).reshape(spec.null, p, rows)
    return weights, order


def _permuted(groups, order, layout: layout_lib.ItemLayout):
    """Per group ``(P_g, b, d)``: each item's rows in its own order (``order (P, b)``)."""
    out, start = [], 0
    item_of_row = layout.item_order()
    for g in groups:
        idx = order[item_of_row[start:start + g.shape[0]]]  # (P_g, b)
        out.append(jnp.take_along_axis(g, idx[:, :, None], axis=1))
        start += g.shape[0]
    return tuple(out)


@partial(jax.jit, static_argnames=("spec",), donate_argnums=(0,))
def _update(stats: ResampleStats, groups, *, spec: ResampleSpec) -> ResampleStats:
    rows = groups[0].shape[1]
    some = stats.boot if stats.boot is not None else stats.null
    weights, order = batch_draws(spec, some.batches[0], rows)
    add = partial(streaming.accumulate, spec=spec.stream)
    boot, null = stats.boot, stats.null
    if boot is not None:
        boot = jax.vmap(add, in_axes=(0, None, 0))(boot, groups, weights)
    if null is not None:
        def shuffled(st, o):
            return add(st, _permuted(groups, o, spec.stream.layout), None)

        null = jax.vmap(shuffled)(null, order)
    return ResampleStats(boot, null)


@full_precision
def update(stats: ResampleStats, batch: layout_lib.Activations, *, spec: ResampleSpec,
           check: bool = True) -> ResampleStats:
    """Adds a batch to every replicate (one compiled call; `stats` is donated).

    Raises:
      ValueError: wrong layout, or a batch whose rows are not whole examples.
      SimilarityInputError: NaN or inf in the batch (with ``check``).
    """
    batch = streaming.check_batch(batch, spec.stream, check=check)
    rows = layout_lib.num_examples(batch)
    if rows % spec.rows_per_example:
        raise ValueError(f"a batch of {rows} rows is not whole examples of "
                         f"{spec.rows_per_example} rows each.")
    some = stats.boot if stats.boot is not None else stats.null
    groups = layout_lib.to_groups(batch, spec.stream.layout, some.shift[0].dtype)
    return _update(stats, groups, spec=spec)


def _over_replicates(fn, stats, *, looped: bool = False):
    """``fn`` of each replicate: vmapped, or looped (`lax.map`: one compiled body; a
    vmapped eigendecomposition batches many small matrices, far slower on CPU)."""
    if stats is None:
        return None
    return jax.lax.map(fn, stats) if looped else jax.vmap(fn)(stats)


@partial(jax.jit, static_argnames=("spec", "debiased"))
def _linear_cka(stats: ResampleStats, *, spec: ResampleSpec, debiased: bool) -> Replicates:
    fn = partial(readout.linear_cka_values, spec=spec.stream, debiased=debiased)
    return Replicates(_over_replicates(fn, stats.boot), _over_replicates(fn, stats.null))


@full_precision
def linear_cka(stats: ResampleStats, *, spec: ResampleSpec,
               debiased: bool = False) -> Replicates:
    """Linear CKA replicates of the spec's pairs: ``boot (B, Q)``, ``null (K, Q)``."""
    if debiased and not spec.stream.debiased:
        raise ValueError("this resample spec was created with debiased=False; recreate it.")
    some = stats.boot if stats.boot is not None else stats.null
    streaming.check_count(some, 4 if debiased else 2, "CKA replicates")
    return _linear_cka(stats, spec=spec, debiased=debiased)


@partial(jax.jit, static_argnames=("spec", "method", "keep", "only", "convention"))
def _cca(stats, epsilon, rtol, *, spec, method, keep, only, convention) -> Replicates:
    fn = partial(readout.cca_values, epsilon=epsilon, rtol=rtol, spec=spec.stream,
                 method=method, keep=keep, only=only, convention=convention)
    return Replicates(_over_replicates(fn, stats.boot, looped=True),
                      _over_replicates(fn, stats.null, looped=True))


@full_precision
def cca_similarity(stats: ResampleStats, *, spec: ResampleSpec, method: str = "svcca",
                   keep: float | int = 0.99, epsilon: float = 0.0, rtol: float | None = None,
                   only: Sequence[int] | None = None,
                   convention: str = "released") -> Replicates:
    """CCA / SVCCA / PWCCA replicates (see `streaming.cca_similarity`): ``(B, Q)``,
    ``(K, Q)``, NaN outside `only`. Costs ``B + K`` eigendecomposition pairs per pair."""
    some = stats.boot if stats.boot is not None else stats.null
    streaming.check_count(some, 2, "a covariance")
    epsilon, rtol, static = streaming.cca_options(some, spec.stream, method, keep, epsilon,
                                                  rtol, only, convention)
    static["spec"] = spec
    return _cca(stats, epsilon, rtol, **static)


class Estimate(NamedTuple):
    """A statistic with its replicates: ``value (Q,)`` and `Replicates`."""

    value: jax.Array
    replicates: Replicates


def in_memory(acts: layout_lib.Activations, pairs, *, method: str = "linear_cka",
              debiased: bool = False, bootstrap: int = 200, null: int = 50, seed: int = 0,
              rows_per_example: int = 1, batch_size: int | None = None,
              **cca_options) -> Estimate:
    """Point value and replicates for activations held in memory, by streaming them.

    Args:
      acts: ``(C, L, n, d)`` or a list over layers of ``(C, n, d_l)``.
      pairs: ``(Q, 2)`` item pairs (``c * L + l``).
      method: ``'linear_cka'``, or ``'cca'``, ``'svcca'``, ``'pwcca'``.
      debiased: debiased CKA.
      bootstrap, null, seed, rows_per_example: see `ResampleSpec`.
      batch_size: rows per streamed batch; default all (null permutations over every
        example).
      **cca_options: ``keep``, ``epsilon``, ``rtol``, ``convention`` for the CCA family.
    """
    acts = interop.accept_tree(acts)
    n = layout_lib.num_examples(acts)
    size = batch_size or n

    def batch(s):
        if isinstance(acts, (list, tuple)):
            return [a[:, s:s + size] for a in acts]
        return acts[:, :, s:s + size]

    spec = ResampleSpec.create(acts, pairs=pairs, debiased=debiased, bootstrap=bootstrap,
                               null=null, rows_per_example=rows_per_example, seed=seed)
    point = streaming.init(spec.stream, batch(0))
    stats = init(spec, batch(0))
    for s in range(0, n, size):
        point = streaming.update(point, batch(s), spec=spec.stream)
        stats = update(stats, batch(s), spec=spec)
    if method == "linear_cka":
        value = streaming.linear_cka(point, spec=spec.stream, debiased=debiased)
        return Estimate(value, linear_cka(stats, spec=spec, debiased=debiased))
    value = streaming.cca_similarity(point, spec=spec.stream, method=method, **cca_options)
    return Estimate(value, cca_similarity(stats, spec=spec, method=method, **cca_options))
