"""First-layer filter grids: the conv1 kernels of several checkpoints or inits side by side.

`first_conv_kernel` finds a model's first convolution ``(kh, kw, cin, cout)`` in a params
tree, `filter_grid` tiles its filters into one RGB image and `plot_filter_grids` draws the
grids of several trees (random init, pretrained, Mean-Var, fine-tuned, ...) with labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transfusion_jax.analysis.weight_change import ordered_leaves
from transfusion_jax.outputs import plt, save_figure

NORMALISATIONS = ("minmax", "symmetric")


def first_conv_path(params: Mapping[str, Any], blocks: Sequence[str] | None = None) -> str:
    """The path of the first 4-D ``kernel`` of a params tree in forward order.

    Args:
      params: nested dicts of arrays (or ``{"params", "batch_stats"}``); only shapes are read,
        so a `jax.eval_shape` tree works.
      blocks: the model's ``block_names()``; without them ``stem`` goes first, head/aux
        groups last and the rest in natural order (`ordered_leaves`).

    Returns:
      e.g. ``"stem/conv1/kernel"`` (ResNet), ``"stem/conv/kernel"`` (EfficientNet-Lite),
      ``"block1/conv/kernel"`` (CBR), ``"conv2d0/conv/kernel"`` (GoogLeNet),
      ``"Conv2d_1a_3x3/conv/kernel"`` (Inception-v3).
    """
    for path, leaf in ordered_leaves(params, blocks):
        if path.split("/")[-1] == "kernel" and len(leaf.shape) == 4:
            return path
    raise ValueError("no 4-D conv kernel in the params tree")


def first_conv_kernel(params: Mapping[str, Any],
                      blocks: Sequence[str] | None = None) -> np.ndarray:
    """The first convolution kernel ``(kh, kw, cin, cout)`` of a params tree (`first_conv_path`).
    """
    node: Any = params
    if "params" in node and set(node) <= {"params", "batch_stats"}:
        node = node["params"]
    for key in first_conv_path(params, blocks).split("/"):
        node = node[key]
    return np.asarray(node)


def filter_grid(kernel: Any, *, max_filters: int = 64, indices: Sequence[int] | None = None,
                normalise: str = "minmax", tile_pixels: int = 24) -> np.ndarray:
    """Tiles conv filters into one image.

    Display channels: RGB when ``cin == 3``, grey (replicated) when ``cin == 1``, else the
    mean over input channels (grey). Each filter is normalised on its own display values:
    ``"minmax"`` maps its min to 0 and max to 1; ``"symmetric"`` maps 0 to 0.5 and its
    largest ``|w|`` to 0 or 1 (so colours keep their sign). A constant filter is drawn as
    0.5 grey. Filters go row by row in a near-square grid, with a 1-kernel-pixel white gap
    (1.0) between tiles, all upsampled (nearest) by an integer factor so each tile is at least
    ``tile_pixels`` wide.

    Args:
      kernel: ``(kh, kw, cin, cout)``.
      max_filters: show the first ``max_filters`` filters (ignored with ``indices``).
      indices: which filters to show, in order (e.g. the most changed ones).
      normalise: ``"minmax"`` or ``"symmetric"``.
      tile_pixels: the minimum tile size in output pixels.

    Returns:
      ``(H, W, 3)`` float32 in [0, 1] with ``H = (rows * (kh + 1) - 1) * s`` and
      ``W = (cols * (kw + 1) - 1) * s``, ``s = ceil(tile_pixels / max(kh, kw))``.
    """
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"filter_grid needs a (kh, kw, cin, cout) kernel, got {kernel.shape}")
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
    kh, kw, cin, cout = kernel.shape
    chosen = np.asarray(indices if indices is not None else range(min(max_filters, cout)))
    filters = np.moveaxis(kernel[..., chosen], -1, 0)  # (n, kh, kw, cin)
    if cin == 3:
        shown = filters
    else:
        shown = np.repeat(filters.mean(-1, keepdims=True), 3, axis=-1)
    n = shown.shape[0]
    axes = (1, 2, 3)
    if normalise == "minmax":
        low, high = shown.min(axes, keepdims=True), shown.max(axes, keepdims=True)
        span = high - low
        tiles = np.where(span > 0, (shown - low) / np.where(span > 0, span, 1), 0.5)
    else:
        peak = np.abs(shown).max(axes, keepdims=True)
        tiles = np.where(peak > 0, 0.5 + shown / (2 * np.where(peak > 0, peak, 1)), 0.5)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    padded = np.ones((rows * cols, kh + 1, kw + 1, 3))
    padded[:n, :kh, :kw] = tiles
    grid = padded.reshape(rows, cols, kh + 1, kw + 1, 3).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * (kh + 1), cols * (kw + 1), 3)[:-1, :-1]
    scale = max(1, math.ceil(tile_pixels / max(kh, kw)))
    return np.repeat(np.repeat(grid, scale, 0), scale, 1).astype(np.float32)


def plot_filter_grids(kernels: Mapping[str, Any], path: str | Path, *,
                      title: str = "first-layer filters", max_filters: int = 64,
                      indices: Sequence[int] | None = None,
                      normalise: str = "minmax", columns: int = 0) -> str:
    """Draws the filter grids of several kernels side by side, one labelled panel each.

    The same filter indices are shown in every panel, at the same grid positions, so filter
    ``i`` of a pretrained kernel sits beside filter ``i`` of its fine-tuned version.

    Args:
      kernels: label -> ``(kh, kw, cin, cout)``, e.g. ``{"random": k1, "pretrained": k2}``.
      path: PNG to write.
      title: figure title.
      max_filters, indices, normalise: as in `filter_grid`.
      columns: panels per row (0 = all in one row); e.g. 2 for (init, trained) pairs.

    Returns:
      the PNG path written.
    """
    if not kernels:
        raise ValueError("plot_filter_grids needs at least one kernel")
    cols = columns or len(kernels)
    rows = math.ceil(len(kernels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 4.0 * rows), squeeze=False,
                             constrained_layout=True)
    for ax in axes.flat[len(kernels):]:
        ax.axis("off")
    for ax, (label, kernel) in zip(axes.flat, kernels.items(), strict=False):
        shape = np.shape(kernel)
        ax.imshow(filter_grid(kernel, max_filters=max_filters, indices=indices,
                              normalise=normalise), interpolation="nearest")
        ax.set_title(f"{label}\n{shape[0]}x{shape[1]}x{shape[2]}, {shape[3]} filters",
                     fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title} ({normalise} per filter)", fontsize=10)
    return str(save_figure(fig, path, dpi=120))
