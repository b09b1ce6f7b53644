"""Representations of many checkpoints at once: the model vmapped over stacked parameters.

One compiled call maps a batch of images through every checkpoint of a trajectory and
returns, per chosen layer, ``(C, b, d)`` representations (conv maps reduced by a named
choice, see `transfusion_jax.similarity.reduce_conv`).

On CPU the checkpoints run one after another inside that call (`jax.lax.map`): mapped with
``jax.vmap`` over per-checkpoint kernels, a convolution becomes one grouped convolution,
which XLA:CPU runs far slower (48 quickstart checkpoints x 250 images: 12.8 s vmapped,
6.7 s vmapped in the matrix-product form, 4.4 s with ``lax.map``, the same values). On
GPU/TPU they are vmapped. A partial last batch is mapped without its padding rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.similarity import reduce_conv


def make_stacked_forward(model: nn.Module, layers: Sequence[str],
                         reduction: str) -> Callable[[Any, jax.Array], list[jax.Array]]:
    """Returns ``f(stacked_variables, images) -> [(C, m, d_l) per layer]``, jitted.

    ``m`` is the batch size, or ``batch * h * w`` for ``flatten_positions``.
    """
    def one(variables, images):
        _, out = model.apply(variables, images, train=False)
        return [reduce_conv(out[n], reduction, layout="NHWC").astype(jnp.float32)
                for n in layers]

    if jax.default_backend() == "cpu":
        return jax.jit(lambda variables, images: jax.lax.map(lambda v: one(v, images),
                                                             variables))
    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def stacked_activation_batches(forward: Callable, variables: Any,
                               batches: Iterable[dict[str, np.ndarray]], *,
                               max_examples: int = 0,
                               kept: list[int] | None = None) -> Iterator[list[jax.Array]]:
    """Per eval batch, the per-layer ``(C, m, d)`` activations of its real examples.

    Padding rows are dropped before the forward pass (with ``flatten_positions`` each
    example owns ``h * w`` consecutive rows of its layer).

    Args:
      forward: from `make_stacked_forward`.
      variables: stacked variables (leading checkpoint axis).
      batches: eval batches with a ``mask`` (`transfusion_jax.data.eval_batches`).
      max_examples: stop after this many real examples (0 = all).
      kept: if given, each yielded batch's number of examples is appended to it.
    """
    seen = 0
    for batch in batches:
        keep = np.flatnonzero(batch["mask"] > 0)
        if max_examples:
            keep = keep[: max(0, max_examples - seen)]
        if keep.size == 0:
            break
        images = batch["image"]
        if keep.size < len(images):  # padding (or examples past max_examples): not mapped
            images = images[keep]
        acts = forward(variables, jnp.asarray(images))
        out = list(acts)
        if kept is not None:
            kept.append(int(keep.size))
        yield out
        seen += keep.size
