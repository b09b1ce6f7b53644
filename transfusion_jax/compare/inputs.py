"""The conventions `compare` shares with its adapters: layer specs, batch inputs, activations.

* **Layers** are a list of names, or a dict ``{display name: layer name}``; the display
  names label the result, the layer names are looked up in the model.
* **Batches**: the iterator yields the model input itself (an array or tensor), a dict whose
  ``"image"`` entry is the input, or a tuple/list whose first element is the input (a
  PyTorch ``DataLoader``'s ``(images, labels)``). An adapter's ``get_input`` overrides the
  rule.
* **Activations** become representations ``(m, d)`` (`transfusion_jax.similarity`'s
  convention): 2-D activations ``(n, d)`` are used as they are, 4-D conv maps are reduced by
  the named reduction (`transfusion_jax.similarity.reduce_conv`) after channels-first maps
  ``(n, c, h, w)`` are moved to channels-last ``(n, h, w, c)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.similarity import REDUCTIONS, reduce_conv

LAYOUTS = ("nhwc", "nchw")


class CompareError(ValueError):
    """A comparison that cannot run as asked: unknown layers, mismatched or empty input."""


def layer_spec(layers: Sequence[str] | Mapping[str, str], role: str) -> dict[str, str]:
    """``{display name: layer name}`` from a list of names or such a dict.

    Raises:
      CompareError: no layers, a bare string, non-string names, or repeated display names.
    """
    if isinstance(layers, str):
        raise CompareError(f"{role}: give a list of layer names (got the string {layers!r}); "
                           f"write [{layers!r}] for one layer.")
    if isinstance(layers, Mapping):
        spec = dict(layers)
    else:
        names = list(layers)
        if len(set(names)) != len(names):
            raise CompareError(f"{role}: repeated layer names in {names}.")
        spec = {name: name for name in names}
    if not spec:
        raise CompareError(f"{role}: no layers to compare; name at least one.")
    bad = [k for k, v in spec.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise CompareError(f"{role}: layer names must be strings; got {bad}.")
    return spec


def check_layers(requested: Sequence[str], valid: Sequence[str], role: str,
                 what: str) -> None:
    """Raises one `CompareError` naming every unknown layer and listing the valid ones."""
    unknown = [name for name in requested if name not in valid]
    if unknown:
        raise CompareError(
            f"{role}: unknown layer(s) {unknown}; valid names ({what}): {', '.join(valid)}."
        )


def default_input(batch: Any, key: str = "image") -> Any:
    """The model input of one batch: ``batch[key]`` of a dict, ``batch[0]`` of a tuple or
    list, else the batch itself."""
    if isinstance(batch, Mapping):
        if key not in batch:
            raise CompareError(
                f"a batch is a dict without the input key {key!r} (keys: {list(batch)}); "
                f"yield {{{key!r}: images, ...}}, or give the model a get_input function."
            )
        return batch[key]
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise CompareError("a batch is an empty tuple; its first element must be the input.")
        return batch[0]
    return batch


def num_examples(x: Any) -> int:
    """Leading size of the first array in a model input (an array or a pytree of arrays)."""
    leaves = jax.tree.leaves(x)
    if not leaves or not np.shape(leaves[0]):
        raise CompareError(
            f"a model input must be an array with a leading example axis; got {type(x)}."
        )
    return int(np.shape(leaves[0])[0])


def take(x: Any, n: int) -> Any:
    """The first ``n`` examples of a model input (an array or a pytree of arrays)."""
    return jax.tree.map(lambda a: a[:n], x)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise CompareError(
            f"unknown conv reduction {reduction!r}; choose one of {sorted(REDUCTIONS)}."
        )


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise CompareError(f"unknown activation layout {layout!r}; choose one of {LAYOUTS}.")


def representation(a: Any, name: str, reduction: str, layout: str = "nhwc") -> jax.Array:
    """Activations of one layer -> ``(m, d)`` representation, float32 (float64 kept).

    Args:
      a: ``(n, d)``, or a conv map ``(n, h, w, c)`` (``layout='nhwc'``) or ``(n, c, h, w)``
        (``'nchw'``); NumPy, JAX, or anything ``np.asarray`` reads.
      name: the layer's name, for errors.
      reduction: ``'mean_pool'`` -> ``(n, c)``, ``'flatten_positions'`` -> ``(n*h*w, c)``,
        ``'flatten_all'`` -> ``(n, h*w*c)`` (features in ``h, w, c`` order).
      layout: axis order of 4-D maps.

    Raises:
      CompareError: activations that are neither 2-D nor 4-D.

    Works inside ``jit`` (shapes are static).
    """
    if not isinstance(a, jax.Array):
        a = np.asarray(a)
    if a.ndim not in (2, 4):
        raise CompareError(
            f"layer {name!r} gives activations of shape {tuple(a.shape)}; expected (n, d) or a "
            "conv map (n, h, w, c) / (n, c, h, w). Return a 2-D or 4-D array for it (e.g. "
            "flatten or pool token axes yourself)."
        )
    # bfloat16 / float16 / integer activations are upcast; float64 stays under x64.
    wide = a.dtype == np.float64 and jax.config.jax_enable_x64
    a = jnp.asarray(a, jnp.float64 if wide else jnp.float32)
    if a.ndim == 2:
        return reduce_conv(a, reduction)
    return reduce_conv(a, reduction, layout="NCHW" if layout == "nchw" else "NHWC")


def rows_of(reps: Sequence[Any]) -> list[int]:
    return [int(np.shape(r)[0]) for r in reps]


ForwardFn = Callable[[Any], list[jax.Array]]
