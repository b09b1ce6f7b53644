"""Maximal activation images (Gonthier et al. 2020): per channel, the images it responds to most.

Each image gets, per channel, the score ``mean_{h,w} max(x, 0)`` of the layer's map (dense
layers: ``max(x, 0)``). One pass over the data keeps, for every checkpoint and channel at once,
the top-k images (a jitted streaming merge: the running ``(C, channels, k)`` top-k is
concatenated with the batch's scores and `jax.lax.top_k` is taken again; ties go to the lower
dataset index, as a stable sort would) and accumulates exact counts for the set of *all*
positive images: per channel the number of positive images, of images positive for both of
two checkpoints, and their class histogram. Memory is ``O(C * channels * (k + batch +
num_classes) + C^2 * channels)`` plus the ``(n,)`` labels; no ``(n, channels)`` score matrix is
kept.

Definitions (`max_activation_compare.compare_topk`), for checkpoints ``a`` (before) and
``b`` (after):

- ``A_k``: the top-k images of a channel that have a positive score (``|A_k| =
  min(k, num_positive)``). Images with score 0 are excluded: they tie, so which of them enter
  a top-k would be arbitrary. ``k = "all"``: every image with a positive score.
- overlap: ``|A_k & B_k| / max(|A_k|, |B_k|)``, i.e. ``|A & B| / k`` of the paper whenever
  both channels have at least k positive images; NaN when both sets are empty.
- class entropy ``H = -sum_j p_j log p_j`` (nats) of the class histogram ``p`` of ``A_k``
  (multi-label: the normalised sum of the images' label vectors); purity ``1 - H /
  log(num_classes)``: 1 when every image shares one class, 0 for a uniform histogram. NaN
  when ``A_k`` is empty.
- dead channel: no image of the whole pass has a positive score.

A spatial mean after ReLU is positive for almost every image in conv layers, so there the
``"all"`` sets are nearly the whole dataset (overlap ~1, purity ~0); they tell more for dense
layers and for units that are often off.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

KValue = int | str  # a positive int, or "all" (every image with a positive score)


def channel_scores(maps: jax.Array) -> jax.Array:
    """Per image and channel, the spatial mean after ReLU.

    Args:
      maps: ``(n, h, w, c)`` conv maps or ``(n, c)`` dense features.

    Returns:
      ``(n, c)`` float32 scores, ``>= 0``.
    """
    x = jnp.maximum(maps.astype(jnp.float32), 0)
    if x.ndim == 4:
        return x.mean(axis=(1, 2))
    if x.ndim == 2:
        return x
    raise ValueError(f"expected (n, h, w, c) or (n, c) maps, got shape {maps.shape}")


def stacked_maps_forward(model: nn.Module, layers: Sequence[str]) -> Callable[[Any, jax.Array],
                                                                          dict[str, jax.Array]]:
    """``f(stacked_variables, images) -> {layer: (C, b, h, w, c) or (C, b, c)}`` (not jitted:
    `max_activation_topk` jits it together with the top-k merge)."""
    def one(variables, images):
        _, out = model.apply(variables, images, train=False)
        return {name: out[name] for name in layers}

    return jax.vmap(one, in_axes=(0, None))


@dataclasses.dataclass
class TopKResult:
    """The top-k images of every channel of one layer, for C checkpoints.

    Attributes:
      layer: the model output's name.
      scores: ``(C, channels, k)`` float32, descending.
      indices: ``(C, channels, k)`` int32 dataset indices (position among real examples).
      num_positive: ``(C, channels)`` images with a positive score.
      co_positive: ``(C, C, channels)`` images positive for both checkpoints.
      positive_hist: ``(C, channels, num_classes)`` class histogram of the positive images.
      labels: ``(n,)`` int (or ``(n, num_classes)`` multi-label) labels of every image.
      k: the kept k, clamped to the number of images.
    """

    layer: str
    scores: np.ndarray
    indices: np.ndarray
    num_positive: np.ndarray
    co_positive: np.ndarray
    positive_hist: np.ndarray
    labels: np.ndarray
    k: int

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return self.positive_hist.shape[-1]

    @property
    def top_labels(self) -> np.ndarray:
        """``(C, channels, k)`` labels of the top-k (``(..., num_classes)`` multi-label)."""
        return self.labels[self.indices]


def _merge(state: dict, scores: jax.Array, valid: jax.Array, index: jax.Array,
           onehot: jax.Array) -> dict:
    """One batch of ``(C, b, ch)`` scores into a layer's running top-k and counts."""
    positive = (scores > 0) & valid[None, :, None]
    pos = positive.astype(jnp.float32)
    co = jnp.einsum("abk,cbk->ack", pos, pos).astype(jnp.int32)  # exact: at most b per batch
    masked = jnp.where(valid[None, :, None], scores, -jnp.inf).transpose(0, 2, 1)
    cat = jnp.concatenate([state["scores"], masked], axis=-1)
    idx = jnp.concatenate([state["indices"], jnp.broadcast_to(index, masked.shape)], axis=-1)
    top, where = jax.lax.top_k(cat, state["scores"].shape[-1])
    return {"scores": top, "indices": jnp.take_along_axis(idx, where, axis=-1),
            "num_positive": state["num_positive"] + positive.sum(1, dtype=jnp.int32),
            "co_positive": state["co_positive"] + co,
            "positive_hist": state["positive_hist"] + jnp.einsum("cbk,bm->ckm", pos, onehot)}


def _init_state(shape: tuple[int, ...], k: int, num_classes: int) -> dict:
    """Empty running state of a layer whose scores are ``(C, b, channels)``."""
    num_c, channels = shape[0], shape[-1]
    return {"scores": jnp.full((num_c, channels, k), -jnp.inf, jnp.float32),
            "indices": jnp.full((num_c, channels, k), -1, jnp.int32),
            "num_positive": jnp.zeros((num_c, channels), jnp.int32),
            "co_positive": jnp.zeros((num_c, num_c, channels), jnp.int32),
            "positive_hist": jnp.zeros((num_c, channels, num_classes), jnp.float32)}


def max_activation_topk(forward_fn: Callable[[Any, jax.Array], dict[str, jax.Array]],
                        variables: Any, batches: Iterable[dict[str, np.ndarray]], *,
                        layers: Sequence[str], k: int, num_classes: int,
                        num_examples: int = 0) -> dict[str, TopKResult]:
    """One pass over ``batches``: per layer, checkpoint and channel, the top-k images.

    Args:
      forward_fn: ``f(variables, images (b, ...)) -> {layer: (C, b, h, w, c) or (C, b, c)}``,
        e.g. `stacked_maps_forward`; jitted here with the merge (one compilation when every
        batch has the same shape, as padded eval batches do).
      variables: stacked variables (leading ``(C,)`` axis), passed to ``forward_fn``.
      batches: ``{"image", "label", "mask"}`` in dataset order (`eval_batches`); rows with
        ``mask == 0`` are padding and ignored. Indices count the real rows seen, i.e. dataset
        indices when one process reads the whole split.
      layers: outputs of ``forward_fn`` to rank.
      k: the largest k wanted (smaller ones are prefixes); clamped to the number of images.
      num_classes: width of the class histograms (int labels ``< num_classes``).
      num_examples: stop after this many real examples (0 = all).

    Returns:
      ``{layer: TopKResult}``.
    """
    if k < 1:
        raise ValueError(f"k must be a positive int, got {k}")

    def step(state, variables, images, valid, labels, offset):
        maps = forward_fn(variables, images)
        index = (offset + jnp.cumsum(valid) - 1).astype(jnp.int32)
        onehot = (labels.astype(jnp.float32) if labels.ndim == 2
                  else jax.nn.one_hot(labels, num_classes)) * valid[:, None]
        return {name: _merge(state[name], jax.vmap(channel_scores)(maps[name]), valid, index,
                             onehot) for name in layers}

    step = jax.jit(step)
    state, labels, seen = None, [], 0
    for batch in batches:
        valid = np.asarray(batch["mask"]) > 0
        if num_examples:
            valid &= np.cumsum(valid) <= num_examples - seen
        if not valid.any():
            break
        images = jnp.asarray(batch["image"])
        if state is None:
            shapes = jax.eval_shape(forward_fn, variables, images)
            missing = sorted(set(layers) - set(shapes))
            if missing:
                raise ValueError(f"layers {missing} are not outputs of forward_fn; it returns "
                                 f"{sorted(shapes)}")
            state = {name: _init_state(shapes[name].shape, k, num_classes) for name in layers}
        state = step(state, variables, images, jnp.asarray(valid), jnp.asarray(batch["label"]),
                     seen)
        labels.append(np.asarray(batch["label"])[valid])
        seen += int(valid.sum())
    if state is None:
        raise ValueError("max_activation_topk got no real example (empty or all-padding data)")
    kept = min(k, seen)
    if kept < k:
        log.warning("top-k: k=%d exceeds the %d images; clamped to k=%d", k, seen, kept)
    labels = np.concatenate(labels)
    state = jax.device_get(state)
    return {name: TopKResult(name, s["scores"][..., :kept], s["indices"][..., :kept],
                             s["num_positive"], s["co_positive"], s["positive_hist"], labels,
                             kept) for name, s in state.items()}
