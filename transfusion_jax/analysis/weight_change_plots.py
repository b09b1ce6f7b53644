"""Tables and figures of a parameter-space comparison (`weight_change`)."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import numpy as np

from transfusion_jax.analysis.weight_change import (
    TrajectoryChange,
    WeightChange,
)
from transfusion_jax.outputs import plt, save_figure, write_csv
from transfusion_jax.paths import to_path

# Matplotlib 3.10 replaced boxplot's ``vert`` by ``orientation``.
_HORIZONTAL = ({"orientation": "horizontal"}
               if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10)
               else {"vert": False})

logger = logging.getLogger(__name__)


def _label(path: str) -> str:
    return path.removesuffix("/kernel")


def write_weight_change(result: WeightChange, out_dir: str | Path, *,
                        trajectory: TrajectoryChange | None = None,
                        title: str = "") -> dict[str, str]:
    """Writes the tables and figures of a `layer_changes` result.

    Files: ``weight_change_layers.csv`` (one row per layer: index, path, shape, num_filters,
    norm_before, norm_after, norm_change, relative_change, correlation,
    filter_correlation_mean/_min, filter_relative_change_mean/_max), ``weight_change_filters.csv``
    (one row per filter: path, filter, correlation, relative_change, mean_abs_before,
    mean_abs_change), ``weight_change_layers.png`` (relative Frobenius change per layer),
    ``filter_correlation.png`` (per-layer distribution of filter correlations) and, with a
    ``trajectory``, ``weight_change_trajectory.png`` (`plot_trajectory_changes`).

    Returns:
      file kind -> path written.
    """
    out = to_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"layers_csv": out / "weight_change_layers.csv",
               "filters_csv": out / "weight_change_filters.csv",
               "layers_png": out / "weight_change_layers.png",
               "correlation_png": out / "filter_correlation.png"}

    def agg(values: np.ndarray, fn) -> float | str:
        return float(fn(values)) if values.size else ""

    write_csv(written["layers_csv"],
               ["index", "path", "shape", "num_filters", "norm_before", "norm_after",
                "norm_change", "relative_change", "correlation", "filter_correlation_mean",
                "filter_correlation_min", "filter_relative_change_mean",
                "filter_relative_change_max"],
               [[i, c.path, "x".join(map(str, c.shape)), c.filter_correlation.size,
                 c.norm_before, c.norm_after, c.norm_change, c.relative_change, c.correlation,
                 agg(c.filter_correlation, np.mean), agg(c.filter_correlation, np.min),
                 agg(c.filter_relative_change, np.mean), agg(c.filter_relative_change, np.max)]
                for i, c in enumerate(result.layers)])
    write_csv(written["filters_csv"],
               ["path", "filter", "correlation", "relative_change", "mean_abs_before",
                "mean_abs_change"],
               [[c.path, j, *values] for c in result.layers
                for j, values in enumerate(zip(c.filter_correlation, c.filter_relative_change,
                                               c.filter_mean_abs_before,
                                               c.filter_mean_abs_change, strict=True))])
    labels = [_label(c.path) for c in result.layers]
    height = 1.2 + 0.22 * max(len(labels), 1)

    fig, ax = plt.subplots(figsize=(7.5, height), constrained_layout=True)
    rel = np.array([c.relative_change for c in result.layers])
    finite = np.isfinite(rel)
    ax.barh(range(len(rel)), np.where(finite, rel, 0), color="tab:blue")
    for i in np.flatnonzero(~finite):
        ax.text(0, i, " inf (zero before)", va="center", fontsize=7, color="tab:red")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    skipped = ""
    if result.skipped:
        names = [_label(p) for p, _ in result.skipped]
        skipped = (f"\nnot compared (shape or name differs): {', '.join(names[:4])}"
                   + (", ..." if len(names) > 4 else ""))
    ax.set(xlabel="||after - before||_F / ||before||_F",
           title=(title or "relative weight change per layer (forward order, top to bottom)")
           + skipped)
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, written["layers_png"], dpi=110)

    fig, ax = plt.subplots(figsize=(7.5, height), constrained_layout=True)
    rows = [(i, c.filter_correlation) for i, c in enumerate(result.layers)
            if c.filter_correlation.size]
    if rows:
        ax.boxplot([r for _, r in rows], positions=[i for i, _ in rows], widths=0.6,
                   **_HORIZONTAL, showfliers=False)
        jitter = np.random.default_rng(0)
        for i, r in rows:
            ax.scatter(r, i + jitter.uniform(-0.2, 0.2, r.size), s=3, alpha=0.4,
                       color="tab:orange", linewidths=0)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set(xlabel="Pearson correlation of each filter, before vs after",
           title=title or "per-filter correlation before/after, per layer")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, written["correlation_png"], dpi=110)
    if trajectory is not None:
        written["trajectory_png"] = to_path(
            plot_trajectory_changes(trajectory, out / "weight_change_trajectory.png"))
    return {k: str(v) for k, v in written.items()}


def plot_trajectory_changes(trajectory: TrajectoryChange, path: str | Path, *,
                            title: str = "") -> str:
    """Relative Frobenius change to the reference checkpoint over training, a line per layer.

    Lines are coloured by depth (dark = first layer); with 12 layers or fewer each is named in
    the legend, otherwise a colour bar gives the layer index in forward order.

    Returns:
      the PNG path written.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    count = len(trajectory.layers)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.95, count))
    values = np.where(np.isfinite(trajectory.relative_change), trajectory.relative_change,
                      np.nan)
    for i, layer in enumerate(trajectory.layers):
        ax.plot(trajectory.steps, values[:, i], "o-", markersize=2.5, linewidth=1.2,
                color=colours[i], label=_label(layer))
    reference = trajectory.steps[trajectory.reference_index]
    ax.set(xlabel="training step", ylabel=f"||W - W(step {reference})||_F / ||W(step "
           f"{reference})||_F", title=title or "weight change to the reference, per layer")
    ax.grid(alpha=0.3)
    if count <= 12:
        ax.legend(fontsize=7, loc="upper left")
    else:
        mappable = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, count - 1))
        fig.colorbar(mappable, ax=ax, label="layer index (forward order)")
    save_figure(fig, path, dpi=110)
    return str(path)
