"""Max-pooling that follows the model's ``conv_impl`` choice (`transfusion_jax.models.conv`).

``xla`` pools with ``lax.reduce_window`` (Flax's ``nn.max_pool``). Its gradient is XLA's
select-and-scatter, which XLA:CPU rewrites into a reduce-window over four int32 index maps and
a scatter: 36 of the 143 ms of a CBR-Tiny training step on one core, where PyTorch's pooling
gradient takes 5. The other forms take the maximum over the ``kh * kw`` strided views of the
``-inf``-padded input, and route each output's gradient to the first view (in row-major window
order, as XLA's select does) that holds the maximum: elementwise work XLA fuses into a few
loops. Both give the same values and gradients.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from transfusion_jax.models.conv import check_conv_impl

Padding = str | Sequence[tuple[int, int]]


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: Padding,
             *, impl: str = "auto") -> jax.Array:
    """Max-pool ``(n, h, w, c)`` maps like ``nn.max_pool`` (padding with ``-inf``).

    Args:
      window: ``(kh, kw)``.
      strides: ``(sh, sw)``.
      padding: ``"SAME"``, ``"VALID"`` or ``((lo, hi), (lo, hi))``.
      impl: a `transfusion_jax.models.conv.CONV_IMPLS` name; ``xla`` (and ``auto`` off CPU)
        uses ``lax.reduce_window``.

    Returns:
      ``(n, h_out, w_out, c)``.
    """
    check_conv_impl(impl)
    window, strides = tuple(window), tuple(strides)
    if impl == "xla" or (impl == "auto" and jax.default_backend() != "cpu"):
        return nn.max_pool(x, window, strides, padding=padding)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _max_pool(x, (window, strides, pads))


def _views(xp: jax.Array, spec) -> list[jax.Array]:
    """The strided view of the padded input each window position reads."""
    window, strides, _ = spec
    out = [(n - k) // s + 1 for n, k, s in zip(xp.shape[1:3], window, strides, strict=True)]
    return [lax.slice(xp, (0, i, j, 0),
                      (xp.shape[0], i + (out[0] - 1) * strides[0] + 1,
                       j + (out[1] - 1) * strides[1] + 1, xp.shape[3]), (1, *strides, 1))
            for i, j in np.ndindex(*window)]


def _padded(x: jax.Array, spec) -> jax.Array:
    return lax.pad(x, jnp.array(-jnp.inf, x.dtype),
                   [(0, 0, 0), *((lo, hi, 0) for lo, hi in spec[2]), (0, 0, 0)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, spec) -> jax.Array:
    # XLA's reduce-window: as fast as the maximum over the views, and not fused (and
    # recomputed per tap) into a following im2col gather.
    window, strides, pads = spec
    return lax.reduce_window(x, -np.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                             ((0, 0), *pads, (0, 0)))


def _max_pool_fwd(x, spec):
    return _max_pool(x, spec), x


def _max_pool_bwd(spec, x, dy):
    # Each output's gradient goes to the first view (row-major window order, as XLA's
    # select) holding its window's maximum. The maximum is found again here, from the one
    # saved x: comparing views with the forward's output instead would misroute wherever
    # XLA computed x's producer twice and rounded it differently.
    views = _views(_padded(x, spec), spec)
    best, first = views[0], jnp.zeros(dy.shape, jnp.int32)
    for t, view in enumerate(views[1:], start=1):
        larger = view > best
        best = jnp.where(larger, view, best)
        first = jnp.where(larger, t, first)
    routed = [jnp.where(first == t, dy, jnp.zeros_like(dy)) for t in range(len(views))]
    # The transpose of taking the views: each routed gradient back to where its view reads.
    xp = _padded(x, spec)
    (dxp,) = jax.linear_transpose(lambda v: _views(v, spec), xp)(routed)
    # Undo the padding (a negative pad crops; a negative one had cropped, now zero-fills).
    return (lax.pad(dxp, jnp.array(0, dxp.dtype),
                    [(0, 0, 0), *((-lo, -hi, 0) for lo, hi in spec[2]), (0, 0, 0)]),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
