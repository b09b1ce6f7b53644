"""Training-curve plots (PNG) from a run's ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from etils import epath

from transfusion_jax.outputs import plt, save_figure


def _series(records: list[dict[str, Any]], split: str, name: str) -> tuple[list, list]:
    points = [(r["step"], r[name]) for r in records
              if r["split"] == split and r.get(name) is not None]
    return [p[0] for p in points], [p[1] for p in points]


# Evaluator metrics drawn on a [0, 1] axis (similarities).
UNIT_RANGE = ("linear_cka", "svcca")
LABELS = {"linear_cka": "linear CKA with step 0", "svcca": "SVCCA with step 0",
          "relative": "||W - W0|| / ||W0||", "filter_corr_mean": "mean filter corr. with W0",
          "filter_corr_min": "min filter corr. with W0"}
FIXED = ("train", "eval", "convergence")


def evaluator_panels(records: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    """``[(evaluator, metric, [keys])]`` of the per-block evaluators in ``records``."""
    panels: dict[tuple[str, str], list[str]] = {}
    for r in records:
        if r["split"] in FIXED:
            continue
        for key in r:
            if "/" in key:
                metric = key.partition("/")[0]
                keys = panels.setdefault((r["split"], metric), [])
                if key not in keys:
                    keys.append(key)
    return [(name, metric, keys) for (name, metric), keys in panels.items()]


def plot_curves(records: list[dict[str, Any]], path: str | Path, *, title: str,
                convergence: dict[str, Any] | None = None) -> epath.Path:
    """Train/eval loss and eval accuracy / AUC / mAP with the threshold; below, one panel
    per metric of each further evaluator (similarity to init, weight change, ...), one line
    per block: the run's learning dynamics.

    Args:
      records: lines of ``metrics.jsonl``.
      path: the PNG to write.
      title: figure title (e.g. model, init and dataset).
      convergence: `ConvergenceTracker.to_dict()`; its threshold is drawn and the step it
        was reached is marked.

    Returns:
      The PNG path.
    """
    panels = evaluator_panels(records)
    cols = 3 if len(panels) > 2 else 2
    rows = 1 + -(-len(panels) // cols)
    fig = plt.figure(figsize=(5.5 * cols, 4.2 * rows), constrained_layout=True)
    grid = fig.add_gridspec(rows, 2 * cols)
    half = cols  # the first row's two panels share the width
    ax_loss, ax_metric = fig.add_subplot(grid[0, :half]), fig.add_subplot(grid[0, half:])
    for index, (name, metric, keys) in enumerate(panels):
        row, col = 1 + index // cols, index % cols
        _plot_evaluator(fig.add_subplot(grid[row, 2 * col:2 * col + 2]), records, name,
                        metric, keys)
    for split, style in (("train", "-"), ("eval", "o-")):
        steps, values = _series(records, split, "loss")
        if steps:
            ax_loss.plot(steps, values, style, label=f"{split} loss", markersize=3)
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss", yscale="log")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    for name in ("accuracy", "auc", "map"):
        steps, values = _series(records, "eval", name)
        if steps:
            ax_metric.plot(steps, values, "o-", label=f"eval {name}", markersize=3)
    steps, values = _series(records, "train", "accuracy")
    if steps:
        ax_metric.plot(steps, values, "-", alpha=0.5, label="train accuracy")
    if convergence:
        ax_metric.axhline(convergence["threshold"], color="grey", ls="--", lw=1,
                          label=f"threshold {convergence['metric']} = {convergence['threshold']}")
        if convergence.get("steps_to_threshold") is not None:
            ax_metric.axvline(convergence["steps_to_threshold"], color="tab:red", ls=":",
                              label=f"reached at step {convergence['steps_to_threshold']}")
    ax_metric.set(xlabel="step", ylabel="metric", title="evaluation")
    ax_metric.legend(loc="lower right", fontsize=8)
    ax_metric.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=110)


def _plot_evaluator(ax: Any, records: list[dict[str, Any]], name: str, metric: str,
                    keys: list[str]) -> None:
    colors = plt.get_cmap("viridis")([i / max(1, len(keys) - 1) * 0.9 for i in range(len(keys))])
    for key, color in zip(keys, colors, strict=True):
        steps, values = _series(records, name, key)
        ax.plot(steps, values, "o-", markersize=2, color=color, label=key.partition("/")[2])
    ax.set(xlabel="step", ylabel=LABELS.get(metric, metric), title=f"{name}: {metric}")
    if metric in UNIT_RANGE:
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.02)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
