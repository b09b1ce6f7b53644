"""How stacked activations of C checkpoints x L layers become "items" grouped by width.

A sweep compares ``P = C * L`` items, item ``p = c * L + l`` being layer ``l`` of checkpoint
``c``. Activations arrive either as one array ``(C, L, n, d)`` (every layer the same width) or
as a list over layers of ``(C, n, d_l)`` arrays (widths may differ). Items of equal width are
stacked into one group array ``(P_g, n, d_g)`` so every product runs as one batched matmul;
`ItemLayout` remembers where each item went. It is static (hashable) and safe to close over
in ``jit``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.similarity import validation

Activations = jax.Array | np.ndarray | Sequence[jax.Array | np.ndarray]


@dataclasses.dataclass(frozen=True)
class ItemLayout:
    """Static description of C checkpoints x L layers of representations.

    Attributes:
      num_checkpoints: ``C``.
      widths: ``(L,)`` feature width of each layer.
      groups: distinct widths, in first-seen order; group ``g`` holds every item of width
        ``groups[g]``, ordered by ``(c, l)``.
    """

    num_checkpoints: int
    widths: tuple[int, ...]

    @property
    def num_layers(self) -> int:
        return len(self.widths)

    @property
    def num_items(self) -> int:
        return self.num_checkpoints * self.num_layers

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self.widths))

    def group_layers(self, g: int) -> tuple[int, ...]:
        """Layers whose width is ``groups[g]``."""
        return tuple(i for i, w in enumerate(self.widths) if w == self.groups[g])

    def item_order(self) -> np.ndarray:
        """``(P,)`` global item index of each row of the concatenated groups."""
        order = []
        for g in range(len(self.groups)):
            layers = self.group_layers(g)
            order += [c * self.num_layers + layer for c in range(self.num_checkpoints)
                      for layer in layers]
        return np.asarray(order)

    def locate(self, item: int) -> tuple[int, int]:
        """``(group, index within group)`` of global item ``c * L + l``."""
        c, layer = divmod(item, self.num_layers)
        g = self.groups.index(self.widths[layer])
        layers = self.group_layers(g)
        return g, c * len(layers) + layers.index(layer)

    def item_width(self, item: int) -> int:
        return self.widths[item % self.num_layers]


def layout_of(acts: Activations) -> ItemLayout:
    """The layout of ``(C, L, n, d)`` or a list over layers of ``(C, n, d_l)``."""
    if isinstance(acts, (list, tuple)):
        shapes = [np.shape(a) for a in acts]
        if not shapes or any(len(s) != 3 for s in shapes):
            raise ValueError(
                "a list of activations must hold one (C, n, d_l) array per layer; got shapes "
                f"{shapes}."
            )
        if len({s[:2] for s in shapes}) != 1:
            raise ValueError(
                f"every layer needs the same (C, n) leading shape; got {[s[:2] for s in shapes]}."
            )
        return ItemLayout(shapes[0][0], tuple(s[2] for s in shapes))
    shape = np.shape(acts)
    if len(shape) != 4:
        raise ValueError(
            "stacked activations must be (C, L, n, d) or a list over layers of (C, n, d_l); "
            f"got shape {shape}. Reduce conv maps with similarity.reduce_conv first."
        )
    return ItemLayout(shape[0], (shape[3],) * shape[1])


def num_examples(acts: Activations) -> int:
    if isinstance(acts, (list, tuple)):
        return int(np.shape(acts[0])[1])
    return int(np.shape(acts)[2])


def to_groups(acts: Activations, layout: ItemLayout, dtype=None) -> tuple[jax.Array, ...]:
    """Stacks items of equal width: a tuple of ``(P_g, n, d_g)`` arrays, one per group."""
    if not isinstance(acts, (list, tuple)):
        c, layers, n, d = np.shape(acts)
        if isinstance(acts, jax.Array):
            return (validation.as_float(acts, dtype).reshape(c * layers, n, d),)
        # Reshape on the host first (a view): reshaping the device copy would copy it again.
        return (validation.as_float(np.reshape(acts, (c * layers, n, d)), dtype),)
    out = []
    for g in range(len(layout.groups)):
        per_layer = [validation.as_float(acts[i], dtype) for i in layout.group_layers(g)]
        stacked = jnp.stack(per_layer, axis=1)  # (C, L_g, n, d)
        c, lg, n, d = stacked.shape
        out.append(stacked.reshape(c * lg, n, d))
    return tuple(out)


def as_array(item_matrix: jax.Array, layout: ItemLayout) -> jax.Array:
    """Reshapes a ``(P, P)`` item matrix to ``(C, L, C, L)``."""
    c, layers = layout.num_checkpoints, layout.num_layers
    return jnp.reshape(item_matrix, (c, layers, c, layers))
