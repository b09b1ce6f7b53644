"""Convolutions behind one project-level choice of implementation (``model.conv_impl``).

Every model builds its convolutions with `Conv`: a `flax.linen.Conv` whose computation is
picked by ``impl`` while its parameters stay Flax's (``kernel`` HWIO and ``bias``, same names,
shapes and initialisers), so checkpoints, weight import and initialisers see no difference.

- ``xla``: ``lax.conv_general_dilated``, XLA's own convolution;
- ``im2col``: every convolution as matrix products (`transfusion_jax.models.conv_matmul`);
- ``auto`` (the default): XLA's convolution on GPU and TPU. On CPU, per convolution, the
  form measured faster for its kind (`cpu_form`; `benchmarks/conv_forms.py` times each kind
  in both forms and records which is faster in ``benchmarks/results/conv_forms_cpu.json``,
  and a test checks the rule against that record). XLA:CPU's convolution is fine for kxk
  kernels on maps wider than the kernel but falls off a cliff elsewhere. Measured on 2 cores,
  batch 64, forward + both gradients, ms, XLA vs matrix products: 5x5, 64 -> 128 channels on
  a 4x4 map 127 vs 21; 3x3, 256 -> 256 on 2x2 140 vs 11 (kernels as wide as the map); 1x1,
  64 -> 256 on 56x56 (batch 16) 689 vs 137 (XLA's kernel gradient); depthwise 5x5 on
  8x8x144, stride 2, 125 vs 9; the 7x7 stride-2 stem on 3 channels 37 vs 23; but 5x5,
  1 -> 16 on 28x28 21 vs 116, 5x5, 16 -> 32 on 14x14 23 vs 64 and 3x3, 32 -> 32 on 56x56
  84 vs 174, where XLA's own is faster. XLA flags (oneDNN, XNNPACK, the thunk runtime) did
  not change these.

The form is chosen when the model is traced, from JAX's default backend. Every form computes
the same function up to rounding: tests compare forward passes and gradients on the zoo.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from transfusion_jax.models import conv_matmul

CONV_IMPLS = ("auto", "xla", "im2col")

# auto on CPU: a strided dense convolution reading at most this many input channels (a stem
# on RGB or grey images) is computed as matrix products.
FEW_INPUT_CHANNELS = 4


def check_conv_impl(impl: str) -> None:
    """Raises ValueError naming the valid choices unless ``impl`` is one of `CONV_IMPLS`."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl={impl!r} is not valid; choose one of: "
                         f"{', '.join(CONV_IMPLS)}")


def for_stacked_runs(model: nn.Module) -> nn.Module:
    """``model`` as it should be mapped over a leading run axis of parameters (``jax.vmap``,
    as `transfusion_jax.train.group` trains many runs together): on CPU, ``auto`` becomes
    ``im2col``; elsewhere, or for a model without ``conv_impl``, ``model`` itself.

    Mapped over per-run kernels, XLA's convolution becomes one grouped convolution
    (``feature_group_count`` = runs x groups), which XLA:CPU runs far slower than the
    batched matrix products of the matmul form: 8 quickstart runs trained together gave 197
    examples/s with ``auto`` and 483 with ``im2col`` (batch 32, 2 cores,
    ``benchmarks/grid_throughput.py --conv-impl``), while one run alone gave 805 with
    ``auto``. An explicit ``xla`` or ``im2col`` is kept.
    """
    if jax.default_backend() == "cpu" and getattr(model, "conv_impl", None) == "auto":
        return model.clone(conv_impl="im2col")
    return model


def cpu_form(kernel_size: Sequence[int], out_size: Sequence[int], c_in: int,
             feature_group_count: int, strides: Sequence[int] = (1, 1)) -> str:
    """``auto``'s choice on CPU for one convolution: ``"im2col"`` or ``"xla"``.

    Matrix products for depthwise convolutions, 1x1 kernels, strided stems (at most
    `FEW_INPUT_CHANNELS` input channels; a stride-1 one, CBR's first layer, is 5x faster in
    XLA's form) and kernels at least as wide as the output map;
    XLA's convolution otherwise (kxk kernels on wider maps, and grouped convolutions, which
    no model here has and nothing measured). ``benchmarks/conv_forms.py`` measures each
    kind; ``tests/test_conv.py`` checks this rule against its recorded results.
    """
    if feature_group_count > 1:
        return "im2col" if feature_group_count == c_in else "xla"
    if all(k == 1 for k in kernel_size):
        return "im2col"
    if c_in <= FEW_INPUT_CHANNELS and max(strides) > 1:
        return "im2col"
    return "im2col" if max(kernel_size) >= min(out_size) else "xla"


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None, *, impl: str = "auto"
                         ) -> jax.Array:
    """``lax.conv_general_dilated`` in form ``impl`` (one of `CONV_IMPLS`).

    Takes the arguments Flax's `nn.Conv` passes: ``lhs`` ``(n, h, w, c_in)``, ``rhs``
    ``(kh, kw, c_in / groups, c_out)``, Flax's channels-last dimension numbers. The matrix
    forms cover strides, kernel dilation, any padding, grouped and depthwise convolutions;
    other cases (input dilation, batch groups, 1-D / 3-D, other layouts) use XLA's.

    Returns:
      ``(n, h_out, w_out, c_out)`` in ``lhs``'s dtype.
    """
    check_conv_impl(impl)
    if (impl == "xla" or lhs.ndim != 4 or any(d != 1 for d in (lhs_dilation or ()))
            or batch_group_count != 1 or preferred_element_type is not None
            or not _is_channels_last(dimension_numbers)):
        form = "xla"
    else:
        g = conv_matmul.geometry(lhs.shape, rhs.shape[:2], tuple(window_strides), padding,
                                 tuple(rhs_dilation or (1, 1)), precision)
        form = impl
        if impl == "auto":
            form = ("xla" if jax.default_backend() != "cpu" else
                    cpu_form(g.kernel_size, g.out_size, lhs.shape[-1], feature_group_count,
                             g.strides))
    if form == "xla":
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    if feature_group_count == 1:
        return conv_matmul.dense_conv(lhs, rhs, g)
    c_in, c_out = lhs.shape[-1], rhs.shape[-1]
    if feature_group_count == c_in:
        if c_out != c_in:  # channel multiplier m: output channel c * m + j reads channel c
            lhs = jnp.repeat(lhs, c_out // c_in, axis=-1)
        return conv_matmul.depthwise_conv(lhs, rhs.reshape(-1, c_out), g)
    return conv_matmul.grouped_conv(lhs, rhs, g, feature_group_count)


def _is_channels_last(dimension_numbers: Any) -> bool:
    """Whether 2-D ``dimension_numbers`` are Flax's: NHWC input and output, HWIO kernel."""
    nhwc = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, ("NHWC", "HWIO", "NHWC"))
    return lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dimension_numbers) == nhwc


@functools.cache
def _conv_fn(impl: str):
    """One function object per form, so that modules built alike compare equal."""
    return functools.partial(conv_general_dilated, impl=impl)


def Conv(features: int, kernel_size: Sequence[int], strides: int | Sequence[int] = 1, *,  # noqa: N802
         impl: str = "auto", **kwargs: Any) -> nn.Conv:
    """A `flax.linen.Conv` computed in form ``impl`` (one of `CONV_IMPLS`).

    Takes `nn.Conv`'s arguments (``padding``, ``kernel_dilation``, ``feature_group_count``,
    ``use_bias``, ``dtype``, ``kernel_init``, ``name``, ...); the parameters, their names,
    shapes and initialisers are `nn.Conv`'s.

    Raises:
      ValueError: ``impl`` is not one of `CONV_IMPLS`.
    """
    check_conv_impl(impl)
    return nn.Conv(features, tuple(kernel_size), strides,
                   conv_general_dilated=_conv_fn(impl), **kwargs)
