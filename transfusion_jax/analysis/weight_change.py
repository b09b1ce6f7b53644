"""Parameter-space change between checkpoints of one architecture (Gonthier et al. 2020).

Per layer (every leaf whose path ends in ``kernel``, optionally ``scale``/``bias`` too): the
Frobenius norm of ``after - before``, of ``before``, and their ratio; per filter (output
channel, the last axis of a conv kernel ``(kh, kw, cin, cout)`` or a dense ``(din, dout)``):
the Pearson correlation of its values before and after, and the relative change
``mean|dw| / mean|w0|``. Statistics are NumPy array ops in float64 over all of a layer's
filters at once, and `trajectory_changes` broadcasts the same per-layer code over a stacked
``(C, ...)`` checkpoint axis. NumPy rather than jitted ``jnp``: the work is a few reductions
per leaf, and compiling them for each distinct leaf shape (~30 in EfficientNet-Lite0) costs
far more on CPU than running them.

Documented values for the degenerate cases (never a silent NaN):

- correlation of a filter (or layer) whose values are constant before or after (zero
  variance, detected exactly as ``max == min``): ``1.0`` when before and after are identical,
  else ``0.0``;
- relative change with a zero denominator (``before`` all zeros): ``0.0`` when nothing
  changed, else ``+inf`` (a move away from zero is unboundedly large relative to it).

`weight_change_plots.write_weight_change` writes the tables and figures of a result
(`weight_change_plots.plot_trajectory_changes` the curves over training).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

KERNEL_SUFFIXES = ("kernel",)


@dataclasses.dataclass
class LayerChange:
    """Change of one parameter leaf.

    Attributes:
      path: ``/``-joined parameter path, e.g. ``"block1/conv/kernel"``.
      shape: the leaf's shape.
      norm_before: ``||before||_F``.
      norm_after: ``||after||_F``.
      norm_change: ``||after - before||_F``.
      relative_change: ``norm_change / norm_before`` (zero-denominator rule above).
      correlation: Pearson correlation of all the leaf's values before vs after.
      filter_correlation: ``(F,)`` per-filter Pearson correlation (``F`` = last axis; empty
        for 1-D leaves such as biases).
      filter_relative_change: ``(F,)`` per-filter ``mean|dw| / mean|w0|``.
      filter_mean_abs_before: ``(F,)`` per-filter ``mean|w0|``.
      filter_mean_abs_change: ``(F,)`` per-filter ``mean|dw|``.
    """

    path: str
    shape: tuple[int, ...]
    norm_before: float
    norm_after: float
    norm_change: float
    relative_change: float
    correlation: float
    filter_correlation: np.ndarray
    filter_relative_change: np.ndarray
    filter_mean_abs_before: np.ndarray
    filter_mean_abs_change: np.ndarray


@dataclasses.dataclass
class WeightChange:
    """Result of `layer_changes`.

    Attributes:
      layers: one `LayerChange` per compared leaf, in forward order.
      skipped: ``(path, reason)`` of leaves present in only one tree or with different shapes.
    """

    layers: list[LayerChange]
    skipped: list[tuple[str, str]]


@dataclasses.dataclass
class TrajectoryChange:
    """Result of `trajectory_changes`: every checkpoint against a reference one.

    Attributes:
      layers: the ``L`` leaf paths, in forward order.
      relative_change: ``(C, L)`` relative Frobenius change to the reference checkpoint.
      norm_change: ``(C, L)`` ``||W_c - W_ref||_F``.
      correlation: ``(C, L)`` Pearson correlation of each layer's values with the reference.
      reference_index: index of the reference checkpoint along ``C``.
      steps: training step of each checkpoint (``0 .. C-1`` when not given).
    """

    layers: list[str]
    relative_change: np.ndarray
    norm_change: np.ndarray
    correlation: np.ndarray
    reference_index: int
    steps: list[int]


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _group_rank(group: str, blocks: Sequence[str] | None) -> tuple[int, Any]:
    if blocks is not None:
        return (blocks.index(group), "") if group in blocks else (len(blocks), group)
    lowered = group.lower()
    if lowered == "stem":
        return (0, "")
    if lowered in ("head", "classifier", "fc", "logits") or lowered.startswith("aux"):
        return (2, _natural_key(group))
    return (1, _natural_key(group))


def ordered_leaves(params: Mapping[str, Any],
                   blocks: Sequence[str] | None = None) -> list[tuple[str, Any]]:
    """A params tree's leaves as ``(path, array)`` in forward order.

    The top-level groups go in the order of ``blocks`` (the model's ``block_names()``) when
    given, groups not in it last; without ``blocks``: ``stem`` first, ``head``/``fc``/
    ``classifier``/``aux*`` last, the rest in natural order (``block2`` before ``block10``).
    Within a group, paths go in natural order (the tree does not record the call order).

    Args:
      params: nested dicts of arrays; a ``{"params", "batch_stats"}`` variables dict is
        read through its ``params``.

    Returns:
      ``[(path, leaf), ...]`` with ``/``-joined paths.
    """
    params = _params_of(params)
    flat: dict[str, Any] = {}

    def walk(tree: Mapping[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}/")
            else:
                flat[f"{prefix}{key}"] = value

    walk(params, "")
    return sorted(flat.items(), key=lambda kv: (_group_rank(kv[0].split("/")[0], blocks),
                                                _natural_key(kv[0])))


def _params_of(tree: Mapping[str, Any]) -> Mapping[str, Any]:
    if "params" in tree and set(tree) <= {"params", "batch_stats"}:
        return tree["params"]
    return tree


def _selected(params: Mapping[str, Any], blocks: Sequence[str] | None,
              suffixes: Sequence[str]) -> list[tuple[str, Any]]:
    return [(p, v) for p, v in ordered_leaves(params, blocks) if p.split("/")[-1] in suffixes]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``; ``0`` where both are 0, ``+inf`` where only ``den`` is."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1),
                        np.where(num > 0, np.inf, 0.0))


def _pearson(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    """Pearson correlation along ``axis`` (x and y broadcast), with the constant-values rule."""
    xc = x - x.mean(axis, keepdims=True)
    yc = y - y.mean(axis, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis) * (yc * yc).sum(axis))
    r = np.clip((xc * yc).sum(axis) / np.where(den > 0, den, 1), -1.0, 1.0)
    constant = (x.max(axis) == x.min(axis)) | (y.max(axis) == y.min(axis)) | (den <= 0)
    identical = np.all(x == y, axis=axis)
    return np.where(constant, np.where(identical, 1.0, 0.0), r)


def _layer_stats(before: Any, after: Any) -> dict[str, np.ndarray]:
    """Whole-leaf statistics of ``before`` against each of ``after`` ``(C, *before.shape)``.

    Returns:
      name -> ``(C,)`` float64.
    """
    before = np.asarray(before, np.float64).reshape(1, -1)
    after = np.asarray(after, np.float64).reshape(-1, before.shape[1])
    norm_before = np.sqrt(np.sum(before ** 2, axis=1))
    norm_change = np.sqrt(np.sum((after - before) ** 2, axis=1))
    return {"norm_before": np.broadcast_to(norm_before, norm_change.shape),
            "norm_after": np.sqrt(np.sum(after ** 2, axis=1)), "norm_change": norm_change,
            "relative_change": _ratio(norm_change, norm_before),
            "correlation": _pearson(before, after, 1)}


def _filter_stats(before: Any, after: Any) -> dict[str, np.ndarray]:
    """Per-filter statistics of two same-shape leaves; a filter is an index of the last axis.

    Returns:
      name -> ``(F,)`` float64.
    """
    filters = before.shape[-1]
    before = np.asarray(before, np.float64).reshape(-1, filters)
    after = np.asarray(after, np.float64).reshape(-1, filters)
    abs_before = np.abs(before).mean(0)
    abs_change = np.abs(after - before).mean(0)
    return {"filter_correlation": _pearson(before, after, 0),
            "filter_relative_change": _ratio(abs_change, abs_before),
            "filter_mean_abs_before": abs_before, "filter_mean_abs_change": abs_change}


def layer_changes(before: Mapping[str, Any], after: Mapping[str, Any], *,
                  blocks: Sequence[str] | None = None,
                  suffixes: Sequence[str] = KERNEL_SUFFIXES) -> WeightChange:
    """Per-layer and per-filter change from ``before`` to ``after``.

    Args:
      before: params tree (nested dicts of arrays), e.g. the initial or pretrained weights.
      after: params tree of the same architecture, e.g. the fine-tuned weights.
      blocks: the model's ``block_names()``, to list layers in forward order.
      suffixes: last path components to compare (``("kernel",)``; add ``"scale"``/``"bias"``
        for BatchNorm and bias rows, which have no per-filter statistics).

    Returns:
      a `WeightChange`; leaves present in one tree only or with different shapes (e.g. a new
      head for another number of classes) are listed in ``skipped``, not compared.
    """
    old = dict(_selected(before, blocks, suffixes))
    new = dict(_selected(after, blocks, suffixes))
    layers, skipped = [], []
    for path, w0 in _selected(before, blocks, suffixes):
        if path not in new:
            skipped.append((path, "only in before"))
            continue
        w1 = new[path]
        if tuple(w0.shape) != tuple(w1.shape):
            skipped.append((path, f"shape {tuple(w0.shape)} vs {tuple(w1.shape)}"))
            continue
        stats = {k: float(v[0]) for k, v in _layer_stats(w0, w1).items()}
        if w0.ndim >= 2:
            per = _filter_stats(w0, w1)
        else:
            per = {k: np.zeros((0,)) for k in ("filter_correlation", "filter_relative_change",
                                                "filter_mean_abs_before",
                                                "filter_mean_abs_change")}
        layers.append(LayerChange(path=path, shape=tuple(w0.shape), **stats, **per))
    skipped += [(path, "only in after") for path in new if path not in old]
    if skipped:
        logger.info("weight change: %d parameters not compared: %s", len(skipped),
                    ", ".join(f"{p} ({r})" for p, r in skipped))
    return WeightChange(layers, skipped)


def trajectory_changes(stacked_params: Mapping[str, Any], reference_index: int = 0, *,
                       steps: Sequence[int] | None = None,
                       blocks: Sequence[str] | None = None,
                       suffixes: Sequence[str] = KERNEL_SUFFIXES) -> TrajectoryChange:
    """Every checkpoint's change relative to one (by default the first, the init).

    Args:
      stacked_params: params tree (or ``{"params", "batch_stats"}``) whose leaves have a
        leading checkpoint axis ``(C, ...)``, as `runs.Run.stack_variables` returns.
      reference_index: the checkpoint the others are compared with.
      steps: the ``C`` training steps, for plots (default ``0 .. C-1``).
      blocks: the model's ``block_names()``, for forward order.
      suffixes: last path components to compare.

    Returns:
      a `TrajectoryChange` with ``(C, L)`` arrays, equal to `layer_changes` of each pair.
    """
    leaves = _selected(stacked_params, blocks, suffixes)
    if not leaves:
        raise ValueError(f"no parameter ending in {tuple(suffixes)} in the stacked tree")
    count = leaves[0][1].shape[0]
    if not -count <= reference_index < count:
        raise ValueError(f"reference_index {reference_index} out of range for {count} "
                         "checkpoints")
    columns = [_layer_stats(leaf[reference_index], leaf) for _, leaf in leaves]

    def table(key: str) -> np.ndarray:
        return np.stack([np.asarray(c[key], np.float64) for c in columns], axis=1)

    steps = list(steps) if steps is not None else list(range(count))
    if len(steps) != count:
        raise ValueError(f"{len(steps)} steps given for {count} checkpoints")
    return TrajectoryChange([p for p, _ in leaves], table("relative_change"),
                            table("norm_change"), table("correlation"),
                            reference_index % count, steps)


@dataclasses.dataclass(frozen=True)
class FilterRank:
    """One filter of a ranking: its layer ``path``, ``index`` on the last axis, and stats."""

    path: str
    index: int
    relative_change: float
    correlation: float


def top_changed_filters(result: WeightChange, n: int, *,
                        by: str = "relative_change") -> list[FilterRank]:
    """The ``n`` filters that changed most, over all layers.

    Args:
      result: from `layer_changes`.
      n: how many to return (fewer if there are fewer filters).
      by: ``"relative_change"`` (largest first) or ``"correlation"`` (lowest first).

    Returns:
      `FilterRank` entries, most changed first; ties keep forward (layer, index) order.
    """
    if by not in ("relative_change", "correlation"):
        raise ValueError(f"by must be 'relative_change' or 'correlation', got {by!r}")
    layers = [layer for layer in result.layers if layer.filter_correlation.size]
    if not layers:
        return []
    rel = np.concatenate([layer.filter_relative_change for layer in layers])
    corr = np.concatenate([layer.filter_correlation for layer in layers])
    owner = np.concatenate([np.full(layer.filter_correlation.size, i)
                            for i, layer in enumerate(layers)])
    index = np.concatenate([np.arange(layer.filter_correlation.size) for layer in layers])
    order = np.argsort(-rel if by == "relative_change" else corr, kind="stable")[:n]
    return [FilterRank(layers[owner[k]].path, int(index[k]), float(rel[k]), float(corr[k]))
            for k in order]
