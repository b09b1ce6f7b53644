"""Convolutions as matrix products: the ``im2col`` form of `transfusion_jax.models.conv`.

XLA:CPU runs matrix products near the machine's peak, but some of its convolutions far below
it: kernels as wide as the input, 1x1 and depthwise convolutions, and most kernel gradients
(`transfusion_jax.models.conv` lists the measurements). Here:

- a dense convolution gathers each output position's receptive field (the ``kh * kw``
  strided, dilated taps of the padded input) into one row and multiplies the rows by the
  kernel reshaped to ``(kh * kw * c_in, c_out)`` (im2col: Chellapilla, Puri, Simard 2006,
  "High performance convolutional neural networks for document processing"). The backward
  pass is written out (`jax.custom_vjp`): the kernel gradient is ``dY^T @ patches``, the
  orientation XLA:CPU runs fast; for stride 1 the input gradient is the same im2col product
  of the padded output gradient with the flipped kernel, for larger strides the patch
  gradients scattered back;
- a depthwise convolution is the sum over the kernel taps of strided views of the input
  times the taps' per-channel weights, which XLA fuses into one loop; its backward likewise;
- a grouped convolution is one product batched over the groups.

Inputs are channels-last ``(n, h, w, c)``, kernels HWIO ``(kh, kw, c_in / groups, c_out)``;
2-D convolutions only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


class Geometry(NamedTuple):
    """A convolution's static shape parameters (hashable: a `jax.custom_vjp` static argument).

    Attributes:
      kernel_size: ``(kh, kw)``.
      strides: ``(sh, sw)``.
      dilation: kernel dilation ``(dh, dw)``.
      pads: explicit ``((lo, hi), (lo, hi))`` zero padding of the input (negative: a crop).
      out_size: ``(h_out, w_out)``.
      precision: passed to every product (``lax.Precision`` or None).
    """

    kernel_size: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]
    out_size: tuple[int, int]
    precision: Any


def geometry(x_shape: Sequence[int], kernel_size: Sequence[int], strides: Sequence[int],
             padding: str | Sequence[tuple[int, int]], dilation: Sequence[int],
             precision: Any = None) -> Geometry:
    """The `Geometry` of convolving an ``x_shape = (n, h, w, c)`` input.

    Args:
      padding: ``"SAME"``, ``"VALID"`` (`lax.padtype_to_pads`) or explicit pairs.
    """
    spatial = tuple(x_shape[1:-1])
    dilated = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True))
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(spatial, dilated, strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    # A kernel wider than the padded input gives an empty output, as in lax.
    out = tuple(max(0, (n + lo + hi - kd) // s + 1)
                for n, (lo, hi), kd, s in zip(spatial, pads, dilated, strides, strict=True))
    if isinstance(precision, list):
        precision = tuple(precision)
    return Geometry(tuple(kernel_size), tuple(strides), tuple(dilation), pads, out, precision)


def _transposed_geometry(dy_shape: Sequence[int], g: Geometry) -> Geometry:
    """A stride-1 convolution's input gradient is the convolution of its output gradient
    with the flipped kernel, padded by ``k_dilated - 1 - pad`` on each side."""
    pads = [((k - 1) * d - lo, (k - 1) * d - hi)
            for k, d, (lo, hi) in zip(g.kernel_size, g.dilation, g.pads, strict=True)]
    return geometry(dy_shape, g.kernel_size, g.strides, pads, g.dilation, g.precision)


def _pad(x: jax.Array, g: Geometry) -> jax.Array:
    if all(p == (0, 0) for p in g.pads):
        return x
    return lax.pad(x, jnp.array(0, x.dtype),
                   [(0, 0, 0), *((lo, hi, 0) for lo, hi in g.pads), (0, 0, 0)])


def _view(x: jax.Array, g: Geometry, tap: tuple[int, int]) -> jax.Array:
    """The strided view of the padded ``x`` that kernel ``tap`` meets: ``(n, *out_size, c)``."""
    start = [t * d for t, d in zip(tap, g.dilation, strict=True)]
    limit = [s0 + (o - 1) * s + 1 for s0, o, s in zip(start, g.out_size, g.strides, strict=True)]
    return lax.slice(x, (0, *start, 0), (x.shape[0], *limit, x.shape[-1]), (1, *g.strides, 1))


def windows(x: jax.Array, g: Geometry) -> jax.Array:
    """Every output position's receptive field: ``(n, h, w, c) -> (n, h_out, w_out, kh, kw, c)``.

    One gather with static indices: it compiles in a fraction of a second, where
    concatenating ``kh * kw`` shifted slices makes XLA:CPU compile one fusion for seconds.
    """
    x = _pad(x, g)
    if g.kernel_size == (1, 1):  # one (strided) pixel per output: a slice
        return _view(x, g, (0, 0))[:, :, :, None, None]
    rows, cols = (np.arange(o)[:, None] * s + np.arange(k)[None, :] * d
                  for o, k, s, d in zip(g.out_size, g.kernel_size, g.strides, g.dilation,
                                        strict=True))
    return x[:, rows[:, None, :, None], cols[None, :, None, :]]


def patches(x: jax.Array, g: Geometry) -> jax.Array:
    """im2col: ``(n, h, w, c) -> (n * h_out * w_out, kh * kw * c)``; column
    ``(i * kw + j) * c + channel`` meets row ``(i, j, channel)`` of an HWIO kernel."""
    rows = windows(x, g)
    return rows.reshape(-1, int(np.prod(rows.shape[3:])))


def _matmul(a: jax.Array, b: jax.Array, contract: tuple[int, int], precision: Any) -> jax.Array:
    return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                           precision=precision)


def _dense_forward(x: jax.Array, w: jax.Array, g: Geometry):
    cols = patches(x, g)
    y = _matmul(cols, w.reshape(-1, w.shape[-1]), (1, 0), g.precision)
    return y.reshape(x.shape[0], *g.out_size, w.shape[-1]), cols


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_conv(x: jax.Array, w: jax.Array, g: Geometry) -> jax.Array:
    """``x (n, h, w, c_in)`` convolved with ``w (kh, kw, c_in, c_out)``: ``(n, *out_size,
    c_out)``, equal to ``lax.conv_general_dilated`` up to rounding."""
    return _dense_forward(x, w, g)[0]


def _dense_conv_fwd(x, w, g):
    y, cols = _dense_forward(x, w, g)
    return y, (x, cols, w)


def _dense_conv_bwd(g, residuals, dy):
    x, cols, w = residuals
    if 0 in g.out_size:  # an empty output depends on nothing
        return jnp.zeros_like(x), jnp.zeros_like(w)
    c_out = w.shape[-1]
    dy2 = dy.reshape(-1, c_out)
    # dW^T = dY^T @ patches, (c_out, kh * kw * c_in): the transposed-operand product with
    # the few output channels as rows, which XLA:CPU runs several times faster than
    # autodiff's patches^T @ dY.
    dw = _matmul(dy2, cols, (0, 0), g.precision).T.reshape(w.shape)
    if g.strides == (1, 1):
        flipped = jnp.flip(w, axis=(0, 1)).swapaxes(2, 3)
        dx = _dense_forward(dy, flipped, _transposed_geometry(dy.shape, g))[0]
    else:  # the patch gradients, scattered back (the transpose of the im2col gather)
        dcols = _matmul(dy2, w.reshape(-1, c_out), (1, 1), g.precision)
        (dx,) = jax.linear_transpose(lambda v: patches(v, g), x)(dcols)
    return dx.astype(x.dtype), dw.astype(w.dtype)


dense_conv.defvjp(_dense_conv_fwd, _dense_conv_bwd)


def _shifted_sum(x: jax.Array, taps: jax.Array, g: Geometry) -> jax.Array:
    """``sum_t view_t(x) * taps[t]``: ``x (n, h, w, c)``, ``taps (kh * kw, c)`` ->
    ``(n, h_out, w_out, c)``."""
    x = _pad(x, g)
    y = None
    for t, tap in enumerate(np.ndindex(*g.kernel_size)):
        term = _view(x, g, tap) * taps[t]
        y = term if y is None else y + term
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv(x: jax.Array, taps: jax.Array, g: Geometry) -> jax.Array:
    """Depthwise convolution: ``x (n, h, w, c)``, ``taps (kh * kw, c)`` (an HWIO kernel with
    ``c_in / groups = 1``, reshaped) -> ``(n, h_out, w_out, c)``."""
    return _shifted_sum(x, taps, g)


def _depthwise_conv_bwd(g, residuals, dy):
    x, taps = residuals
    if 0 in g.out_size:
        return jnp.zeros_like(x), jnp.zeros_like(taps)
    # dtaps[t, c] = sum over positions of (window tap t) * dy: one fused reduction (as an
    # einsum it becomes a product batched over channels, far slower on CPU).
    rows = windows(x, g).reshape(*dy.shape[:3], -1, x.shape[-1])
    dtaps = jnp.sum(rows * dy[:, :, :, None, :], axis=(0, 1, 2))
    if g.strides == (1, 1):
        dx = _shifted_sum(dy, jnp.flip(taps, axis=0), _transposed_geometry(dy.shape, g))
    else:
        (dx,) = jax.linear_transpose(lambda v: _shifted_sum(v, taps, g), x)(dy)
    return dx.astype(x.dtype), dtaps.astype(taps.dtype)


depthwise_conv.defvjp(lambda x, taps, g: (_shifted_sum(x, taps, g), (x, taps)),
                      _depthwise_conv_bwd)


def grouped_conv(x: jax.Array, w: jax.Array, g: Geometry, groups: int) -> jax.Array:
    """Grouped convolution as one product batched over the groups (autodiff backward).

    Args:
      x: ``(n, h, w, c_in)``.
      w: ``(kh, kw, c_in / groups, c_out)``; output channel ``o`` belongs to group
        ``o // (c_out / groups)``, as in ``lax.conv_general_dilated``.

    Returns:
      ``(n, h_out, w_out, c_out)``.
    """
    c_in, c_out = x.shape[-1], w.shape[-1]
    n_taps = int(np.prod(g.kernel_size))
    rows = windows(x, g).reshape(-1, n_taps, groups, c_in // groups)
    kernel = w.reshape(n_taps, c_in // groups, groups, c_out // groups)
    y = jnp.einsum("mtgc,tcgo->mgo", rows, kernel, precision=g.precision)
    return y.reshape(x.shape[0], *g.out_size, c_out)
