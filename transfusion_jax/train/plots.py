"""Training-curve plots (PNG) from a run's ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _series(records: list[dict[str, Any]], split: str, name: str) -> tuple[list, list]:
    points = [(r["step"], r[name]) for r in records
              if r["split"] == split and r.get(name) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(records: list[dict[str, Any]], path: str | Path, *, title: str,
                convergence: dict[str, Any] | None = None) -> Path:
    """Two panels: train/eval loss, and eval accuracy / AUC / mAP with the threshold.

    Args:
      records: lines of ``metrics.jsonl``.
      path: the PNG to write.
      title: figure title (e.g. model, init and dataset).
      convergence: `ConvergenceTracker.to_dict()`; its threshold is drawn and the step it
        was reached is marked.

    Returns:
      The PNG path.
    """
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
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
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
