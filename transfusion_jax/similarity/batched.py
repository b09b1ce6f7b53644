"""Batched similarity sweeps over C checkpoints x L layers in one compiled computation.

Every function takes stacked activations, ``(C, L, n, d)`` or a list over layers of
``(C, n, d_l)`` (see `layout`), and returns results indexed by item ``p = c * L + l``.

Linear CKA of all pairs (Kornblith et al. 2019) shares every product: it only needs
``H_ij = ||X_i^T X_j||_F^2 = <K_i, K_j>`` for centered items (plus squared row norms for the
debiased estimator of Song et al. 2012). Two exact ways to get all of ``H``:

* Gram form: ``<K_i, K_j>`` summed over row blocks ``r <= s`` of the ``n x n`` Grams
  (symmetry halves the work): for each block pair, one batched matmul gives every item's
  ``b x b`` Gram block and one ``(P, b^2) x (b^2, P)`` matmul adds all ``P^2`` inner
  products. About ``n^2 (D + P^2)`` flops for ``D = sum_i d_i``; memory ``P b^2``.
* Feature form: one ``Z^T Z`` of the concatenated centered items ``Z (n, D)``, then the
  Frobenius norm of each ``d_i x d_j`` block: ``2 n D^2`` flops, ``D^2`` memory.

``form='auto'`` picks the cheaper that fits. Row-block pairs are spread over the devices of a
``data`` mesh (`transfusion_jax.parallel`) and the partial sums are all-reduced.

Accuracy: each item is rescaled by an exact power of two (`scale`), so no moment overflows at
any activation scale. In the Gram form every matmul sums at most ``SUM_CHUNK`` products per
item pair and those partial sums are added with compensated (Neumaier) summation: a single
float32 matmul over all ``n^2`` products (one block of ``n = 1,000`` rows) put CKA of ReLU
activations 4e-4 off float64.

The CCA family's batched forms are in `batched_cca`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from transfusion_jax import parallel
from transfusion_jax.similarity import cka as cka_lib
from transfusion_jax.similarity import compensated as comp
from transfusion_jax.similarity import interop, validation
from transfusion_jax.similarity import layout as layout_lib
from transfusion_jax.similarity import scale as scale_lib
from transfusion_jax.similarity.precision import full_precision

Pairs = Sequence[tuple[int, int]] | np.ndarray


def _prepare(acts, *, debiased: bool):
    acts = interop.accept_tree(acts)
    layout = layout_lib.layout_of(acts)
    stacks = list(acts) if isinstance(acts, (list, tuple)) else [acts]
    for i, a in enumerate(stacks):
        validation.check_stack(
            a, f"activations[{i}]" if len(stacks) > 1 else "activations",
            min_examples=4 if debiased else 2, reason="the debiased estimator divides by n-3",
        )
    leaves = stacks
    dtype = validation.compute_dtype(*leaves)
    return layout, layout_lib.to_groups(acts, layout, dtype)


def _center(groups, *, rescale: bool = True):
    """Centred items; with `rescale`, each rescaled by an exact power of two to magnitudes
    near 1 (`scale`: for CKA, whose moments are fourth powers of the activations)."""
    out = tuple(g - jnp.mean(g, axis=1, keepdims=True) for g in groups)
    return tuple(scale_lib.unit_items(g) for g in out) if rescale else out


def _row_stats(groups, order):
    """Squared row norms ``A (n, P)`` in global item order: ``A^T A`` and column sums."""
    a = jnp.concatenate([jnp.sum(g * g, axis=2) for g in groups], axis=0)[order]  # (P, n)
    return a @ a.T, jnp.sum(a, axis=1)


# ----------------------------------------------------------------------------- all pairs


def choose_matrix_form(n: int, widths: Sequence[int], memory_limit: float = 2**30) -> str:
    """``'feature'`` or ``'gram'`` for all-pairs linear CKA, by flop count and memory."""
    big_d, p = sum(widths), len(widths)
    feature_flops = 2.0 * n * big_d * big_d
    gram_flops = 1.0 * n * n * (big_d + p * p)
    fits = 4.0 * big_d * big_d <= memory_limit
    return "feature" if fits and feature_flops <= gram_flops else "gram"


# Largest Gram row block (it bounds the P b^2 buffers), and the most Gram products one matmul
# sums per item pair before the partial sums are added with compensation: float32 CKA of
# ReLU activations (n = 1,000) was 4e-4 off with every product in one matmul, 7e-6 with
# 62,500, 1.2e-7 with 2,500.
MAX_BLOCK = 256
SUM_CHUNK = 4096


def default_block_size(n: int, num_items: int, budget: int = 2**27) -> int:
    """Row-block size ``b`` with ``P b^2 <= budget`` floats and ``b <= MAX_BLOCK``, spread
    evenly over ``n``.

    Larger blocks make larger matmuls but waste more on the diagonal blocks (a fraction
    ``1 / num_blocks``), hold two ``P b^2`` buffers, and sum more products per matmul (see
    `MAX_BLOCK`).
    """
    target = min(MAX_BLOCK, max(64, int(math.sqrt(budget / max(num_items, 1)))))
    blocks = max(1, -(-n // target))
    return -(-n // blocks)


def _feature_cross_sq(groups, layout):
    z = jnp.concatenate([jnp.moveaxis(g, 0, 1).reshape(g.shape[1], -1) for g in groups], axis=1)
    gram = jnp.square(z.T @ z)
    rows, off = [], 0
    sizes = [g.shape[0] * g.shape[2] for g in groups]
    for gi, g in enumerate(groups):
        cols, off2 = [], 0
        for hi, h in enumerate(groups):
            block = gram[off:off + sizes[gi], off2:off2 + sizes[hi]]
            block = block.reshape(g.shape[0], g.shape[2], h.shape[0], h.shape[2])
            cols.append(jnp.sum(block, axis=(1, 3)))
            off2 += sizes[hi]
        rows.append(jnp.concatenate(cols, axis=1))
        off += sizes[gi]
    return jnp.concatenate(rows, axis=0)


def _gram_cross_sq(groups, block: int, mesh, per_item: bool):
    """``(P, P)`` sum over Gram blocks, in group order, sharded over block pairs.

    Takes uncentered groups: each row block is centered and rescaled (`scale`) as it is sliced
    (fused into the slice copy), so no centered copy of the whole stack is ever materialised.
    Block sums are accumulated with compensated summation. ``per_item`` makes
    each item's ``(b, d) x (d, b)`` Gram block its own matmul in a loop (`per_item_grams`);
    otherwise one batched einsum makes them all.
    """
    n = groups[0].shape[1]
    nb = -(-n // block)
    pad = nb * block - n
    means = tuple(jnp.mean(g, axis=1, keepdims=True) for g in groups)
    factors = tuple(scale_lib.factor(scale_lib.max_abs(g - m, (1, 2)), g.dtype)[:, None, None]
                    for g, m in zip(groups, means, strict=True))
    if pad:
        groups = tuple(jnp.pad(g, ((0, 0), (0, pad), (0, 0))) for g in groups)
    rs = [(r, s) for r in range(nb) for s in range(r, nb)]
    shards = 1 if mesh is None else parallel.num_data_shards(mesh)
    rs += [(0, 0)] * (-len(rs) % shards)
    weights = [0.0 if i >= nb * (nb + 1) // 2 else (1.0 if r == s else 2.0)
               for i, (r, s) in enumerate(rs)]
    r_idx = jnp.asarray([r for r, _ in rs], jnp.int32)
    s_idx = jnp.asarray([s for _, s in rs], jnp.int32)
    w = jnp.asarray(weights, groups[0].dtype)
    p = sum(g.shape[0] for g in groups)

    def centered_rows(g, mean, factor, start):
        rows = jax.lax.dynamic_slice_in_dim(g, start, block, axis=1)
        valid = (start + jnp.arange(block) < n)[None, :, None]  # padded rows stay 0
        return jnp.where(valid, (rows - mean) * factor, 0.0)

    def partial_sum(gs, means, factors, r_idx, s_idx, w):
        def step(acc, rsw):
            r, s, wt = rsw
            blocks = []
            for g, mean, f in zip(gs, means, factors, strict=True):
                xr = centered_rows(g, mean, f, r * block)
                xs = centered_rows(g, mean, f, s * block)
                if per_item:
                    k = jax.lax.map(lambda ab: ab[0] @ ab[1].T, (xr, xs))
                else:
                    k = jnp.einsum("pid,pjd->pij", xr, xs)
                blocks.append(k.reshape(g.shape[0], -1))
            # (b^2, P) layout: XLA:CPU contracts the long axis faster this way than as
            # (P, b^2) @ (b^2, P); the barrier keeps it from folding the transpose back.
            bt = jax.lax.optimization_barrier(jnp.concatenate(blocks, axis=0).T)
            # Sum the b^2 products in chunks of at most SUM_CHUNK, then add the chunks'
            # sums with compensation: one float32 matmul over all b^2 drifted by up to
            # 4e-4 of CKA at b = 1,000 on ReLU activations (each item pair is a long dot
            # product of mostly positive terms).
            for start in range(0, bt.shape[0], SUM_CHUNK):
                chunk = bt[start:start + SUM_CHUNK]
                acc = comp.add(acc, wt * (chunk.T @ chunk))
            return acc, None

        acc, _ = jax.lax.scan(step, comp.zeros((p, p), gs[0].dtype), (r_idx, s_idx, w))
        return comp.value(acc)

    if mesh is None or shards == 1:
        return partial_sum(groups, means, factors, r_idx, s_idx, w)
    spec = PartitionSpec(parallel.DATA_AXIS)

    def sharded(gs, means, factors, r_idx, s_idx, w):
        return jax.lax.psum(partial_sum(gs, means, factors, r_idx, s_idx, w),
                            parallel.DATA_AXIS)

    rep = PartitionSpec()
    return jax.shard_map(
        sharded, mesh=mesh, in_specs=(rep, rep, rep, spec, spec, spec),
        out_specs=PartitionSpec(), check_vma=False,
    )(groups, means, factors, r_idx, s_idx, w)


def per_item_grams(mesh: jax.sharding.Mesh | None) -> bool:
    """Whether the Gram form loops over items (CPU) rather than batching them (GPU, TPU).

    On XLA:CPU a loop of one matmul per item runs ~20% faster than the batched einsum
    ``"pid,pjd->pij"``. On an H100 the batch keeps the whole chip busy: for the benchmark's
    100 items x 5,000 x 512 the call took 0.50 s with the loop and 0.43 s with the einsum,
    both then including a 0.38 s host-side input check (since moved to the device); the
    Gram sums alone take 0.048 s batched, about 0.12 s looped.
    """
    devices = jax.devices() if mesh is None else list(mesh.devices.flat)
    return devices[0].platform == "cpu"


@partial(jax.jit, static_argnames=("layout", "debiased", "form", "block", "mesh", "per_item"))
def _linear_cka_matrix(groups, *, layout, debiased, form, block, mesh, per_item):
    order = layout.item_order()
    inverse = np.argsort(order)
    if form == "feature":
        cross = _feature_cross_sq(_center(groups), layout)
    else:
        cross = _gram_cross_sq(groups, block, mesh, per_item)
    cross = cross[inverse][:, inverse]
    row_dot, norm_sq = _row_stats(_center(groups), inverse)
    n = groups[0].shape[1]
    return cka_lib.linear_cka_from_moments(cross, row_dot, norm_sq, n, debiased=debiased)


def _default_mesh():
    return parallel.data_mesh() if len(parallel.default_devices()) > 1 else None


@full_precision
def linear_cka_matrix(
    acts: layout_lib.Activations,
    *,
    debiased: bool = False,
    form: str = "auto",
    block_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> jax.Array:
    """Linear CKA between every pair of the ``P = C * L`` items, in one compiled call.

    Args:
      acts: ``(C, L, n, d)`` or a list over layers of ``(C, n, d_l)``.
      debiased: unbiased HSIC (Song et al. 2012); needs ``n >= 4``.
      form: ``'gram'``, ``'feature'`` or ``'auto'`` (see the module docstring).
      block_size: Gram row-block size (default keeps ``P b^2`` under 128M floats).
      mesh: device mesh with a ``data`` axis; default all devices when there are several.

    Returns:
      ``(P, P)`` symmetric matrix, item ``p = c * L + l``; `layout.as_array` reshapes it to
      ``(C, L, C, L)``.
    """
    layout, groups = _prepare(acts, debiased=debiased)
    n = layout_lib.num_examples(acts)
    widths = [layout.item_width(i) for i in range(layout.num_items)]
    if form == "auto":
        form = choose_matrix_form(n, widths)
    if form not in ("gram", "feature"):
        raise ValueError(f"form must be 'auto', 'gram' or 'feature'; got {form!r}.")
    block = block_size or default_block_size(n, layout.num_items)
    mesh = _default_mesh() if mesh is None else mesh
    return _linear_cka_matrix(groups, layout=layout, debiased=debiased, form=form,
                              block=int(block), mesh=mesh, per_item=per_item_grams(mesh))


# ------------------------------------------------------------------------ chosen pairs


def _check_pairs(pairs, num_items: int) -> np.ndarray:
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= num_items):
        raise ValueError(f"pair indices must lie in [0, {num_items}); got {pairs.tolist()}.")
    return pairs


def _pair_buckets(pairs: np.ndarray, layout) -> dict:
    """Pairs grouped by (group_i, group_j): positions, local indices."""
    buckets: dict = {}
    for q, (i, j) in enumerate(pairs):
        gi, li = layout.locate(int(i))
        gj, lj = layout.locate(int(j))
        buckets.setdefault((gi, gj), []).append((q, li, lj))
    return buckets


def _pairwise_map(groups, pairs: np.ndarray, layout, fn, out_dtype):
    """Applies ``fn(x_i, x_j)`` (two ``(n, d)`` items) over pairs, one lax.map per bucket."""
    out = jnp.zeros((len(pairs),), out_dtype)
    for (gi, gj), rows in _pair_buckets(pairs, layout).items():
        q = np.asarray([r[0] for r in rows])
        li = jnp.asarray([r[1] for r in rows], jnp.int32)
        lj = jnp.asarray([r[2] for r in rows], jnp.int32)
        xs, ys = groups[gi], groups[gj]
        vals = jax.lax.map(lambda ij, xs=xs, ys=ys: fn(xs[ij[0]], ys[ij[1]]), (li, lj))
        out = out.at[q].set(vals)
    return out


@partial(jax.jit, static_argnames=("layout", "pairs_key", "debiased"))
def _linear_cka_pairs(groups, *, layout, pairs_key, debiased):
    pairs = np.asarray(pairs_key, dtype=np.int64).reshape(-1, 2)
    groups = _center(groups)
    n = groups[0].shape[1]
    items = np.unique(pairs)
    selfs = np.stack([items, items], axis=1)
    cross = lambda x, y: jnp.sum(jnp.square(x.T @ y))  # noqa: E731
    xy = _pairwise_map(groups, pairs, layout, cross, groups[0].dtype)
    diag_vals = _pairwise_map(groups, selfs, layout, cross, groups[0].dtype)
    diag = jnp.zeros((layout.num_items,), groups[0].dtype).at[items].set(diag_vals)
    hx, hy = diag[pairs[:, 0]], diag[pairs[:, 1]]
    if debiased:
        row_dot, norm_sq = _row_stats(groups, np.argsort(layout.item_order()))
        i, j = pairs[:, 0], pairs[:, 1]
        xy = cka_lib.debiased_dot(xy, row_dot[i, j], norm_sq[i], norm_sq[j], n)
        hx = cka_lib.debiased_dot(hx, row_dot[i, i], norm_sq[i], norm_sq[i], n)
        hy = cka_lib.debiased_dot(hy, row_dot[j, j], norm_sq[j], norm_sq[j], n)
    return cka_lib.cka_ratio(xy, hx, hy)


@full_precision
def linear_cka_pairs(
    acts: layout_lib.Activations, pairs: Pairs, *, debiased: bool = False
) -> jax.Array:
    """Linear CKA for chosen item pairs ``(i, j)`` (``i = c * L + l``), self terms shared.

    Args:
      acts: ``(C, L, n, d)`` or a list over layers of ``(C, n, d_l)``.
      pairs: ``(Q, 2)`` item indices.
      debiased: unbiased HSIC (Song et al. 2012).

    Returns:
      ``(Q,)`` CKA values.
    """
    layout, groups = _prepare(acts, debiased=debiased)
    pairs = _check_pairs(pairs, layout.num_items)
    key = tuple(map(tuple, pairs.tolist()))
    return _linear_cka_pairs(groups, layout=layout, pairs_key=key, debiased=debiased)


def all_pairs(num_items: int) -> np.ndarray:
    """``(P (P+1) / 2, 2)`` pairs ``i <= j``."""
    i, j = np.triu_indices(num_items)
    return np.stack([i, j], axis=1)


def reference_pairs(num_checkpoints: int, num_layers: int, reference: int = 0) -> np.ndarray:
    """``(C * L, 2)`` pairs: item ``(c, l)`` with item ``(reference, l)``, row ``c * L + l``."""
    c, layer = np.meshgrid(np.arange(num_checkpoints), np.arange(num_layers), indexing="ij")
    items = (c * num_layers + layer).ravel()
    ref = (reference * num_layers + layer).ravel()
    return np.stack([ref, items], axis=1)


@full_precision
def linear_cka_to_reference(
    acts: layout_lib.Activations, *, reference: int = 0, debiased: bool = False
) -> jax.Array:
    """Per layer, linear CKA of every checkpoint with checkpoint `reference` (e.g. init).

    Costs ``C * L`` pair products instead of the ``(C L)^2`` of the full matrix.

    Returns:
      ``(C, L)``; row `reference` is 1.
    """
    layout = layout_lib.layout_of(acts)
    if not 0 <= reference < layout.num_checkpoints:
        raise ValueError(f"reference {reference} is not in [0, {layout.num_checkpoints}).")
    pairs = reference_pairs(layout.num_checkpoints, layout.num_layers, reference)
    vals = linear_cka_pairs(acts, pairs, debiased=debiased)
    return vals.reshape(layout.num_checkpoints, layout.num_layers)
