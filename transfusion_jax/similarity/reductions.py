"""Named reductions of conv feature maps to representations ``(m, d)``, with explicit layout.

Raghu et al. 2017 (SVCCA) treat each spatial position of a conv map as a datapoint
(``flatten_positions``) or average over positions (``mean_pool``); Kornblith et al. 2019 also
flatten the whole map into features (``flatten_all``). The choice changes the answer, so it is
always explicit.

So is the channel axis. JAX/Flax and TensorFlow (and this project's models) put it last,
``(n, h, w, c)`` = ``'NHWC'``; PyTorch puts it second, ``(n, c, h, w)`` = ``'NCHW'``. Read the
wrong way, a map gives nonsense without an error: on two ResNet-18s, NCHW maps taken as NHWC
left ``mean_pool`` 16 "features" for layer1 and 2 for layer4. So a 4-D array needs
``layout=``, except a ``torch.Tensor``, whose logical shape is always ``(n, c, h, w)`` (also in
``channels_last`` memory format) and which is therefore read as ``'NCHW'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from transfusion_jax.similarity import interop
from transfusion_jax.similarity.validation import SimilarityInputError

LAYOUTS = ("NHWC", "NCHW")


def flatten_positions(a: jax.Array) -> jax.Array:
    """``(n, h, w, c) -> (n*h*w, c)``: every spatial position is an example.

    The examples of two maps only correspond when both have the same ``h, w`` (resize or pool
    one first otherwise).
    """
    n, h, w, c = a.shape
    return jnp.reshape(a, (n * h * w, c))


def mean_pool(a: jax.Array) -> jax.Array:
    """``(n, h, w, c) -> (n, c)``: global average over spatial positions."""
    return jnp.mean(a, axis=(1, 2))


def flatten_all(a: jax.Array) -> jax.Array:
    """``(n, h, w, c) -> (n, h*w*c)``: every (position, channel) is a feature."""
    return jnp.reshape(a, (a.shape[0], -1))


REDUCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "flatten_positions": flatten_positions,
    "mean_pool": mean_pool,
    "flatten_all": flatten_all,
}


def resolve_layout(a: Any, layout: str | None) -> str:
    """The layout of a 4-D map: `layout` if given, ``'NCHW'`` for a torch tensor.

    Raises:
      SimilarityInputError: no layout for a 4-D array that is not a torch tensor, or an
        unknown layout name.
    """
    if layout is not None:
        if layout not in LAYOUTS:
            raise SimilarityInputError(
                f"layout must be one of {LAYOUTS}; got {layout!r}.")
        return layout
    if interop.is_torch(a):
        return "NCHW"
    raise SimilarityInputError(
        f"a 4-D conv map of shape {tuple(a.shape)} needs its channel axis named: pass "
        "layout='NHWC' (channels last: JAX/Flax, TensorFlow, this project's models) or "
        "layout='NCHW' (channels first: PyTorch). A torch.Tensor is read as NCHW.")


def to_nhwc(a: Any, layout: str | None = None) -> jax.Array:
    """A 4-D map as a ``(n, h, w, c)`` `jax.Array` (torch tensors accepted, see `interop`)."""
    layout = resolve_layout(a, layout)
    a = jnp.asarray(interop.accept(a))
    return jnp.transpose(a, (0, 2, 3, 1)) if layout == "NCHW" else a


def reduce_conv(a: Any, reduction: str, *, layout: str | None = None) -> jax.Array:
    """Reduces a conv map (or leaves a 2-D ``(n, d)`` representation) to ``(m, d)``.

    Args:
      a: activations, a 4-D map or a 2-D ``(n, d)`` array; NumPy, JAX or torch (detached,
        half types upcast to float32).
      reduction: one of ``REDUCTIONS`` (``flatten_positions``, ``mean_pool``,
        ``flatten_all``).
      layout: ``'NHWC'`` (``(n, h, w, c)``) or ``'NCHW'`` (``(n, c, h, w)``). Required for
        a 4-D array, except a torch tensor (read as ``'NCHW'`` unless said otherwise).

    Returns:
      The representation, ``(n*h*w, c)``, ``(n, c)`` or ``(n, h*w*c)`` (features in
      ``(h, w, c)`` order whatever the layout).

    Raises:
      ValueError: unknown reduction name.
      SimilarityInputError: a 4-D array without a layout, or one that is neither 2-D nor 4-D.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"unknown conv reduction {reduction!r}; choose one of {sorted(REDUCTIONS)}."
        )
    ndim = len(a.shape) if hasattr(a, "shape") else jnp.ndim(a)
    if ndim == 2:
        return jnp.asarray(interop.accept(a))
    if ndim != 4:
        raise SimilarityInputError(
            f"expected a 4-D conv map or (n, d) activations; got shape {tuple(a.shape)}.")
    return REDUCTIONS[reduction](to_nhwc(a, layout))
