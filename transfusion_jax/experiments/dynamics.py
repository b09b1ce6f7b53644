"""A sweep's learning dynamics, as logged live by the runs' evaluators.

Transfusion's learning-dynamics figure (Raghu et al. 2019, Fig. 6) per group of runs: for
each block, the linear CKA of the representation with the run's own initialisation over
training (``similarity_to_init``) and the relative weight change (``weight_change``), mean
over seeds with a min-max band. Nothing is recomputed: the values are those the evaluators
wrote to each run's ``metrics.jsonl`` while it trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transfusion_jax.experiments.grid import GridRun, group_label
from transfusion_jax.outputs import plt, save_figure, write_csv
from transfusion_jax.runs import metrics_as_arrays, read_metrics

# (evaluator, metric, axis label) drawn, when the runs logged them.
PANELS = (("similarity_to_init", "linear_cka", "linear CKA with own init"),
          ("weight_change", "relative", "||W - W0|| / ||W0||"))


def _curves(runs: Sequence[GridRun], run_dirs: Sequence[Path]) -> dict:
    """``{(evaluator, metric): {block: {group: (steps (T,), values (S, T))}}}``."""
    per_run = []
    for run, d in zip(runs, run_dirs, strict=True):
        per_run.append((group_label(run.axes), metrics_as_arrays(read_metrics(d))))
    curves: dict = {}
    for evaluator, metric, _ in PANELS:
        blocks: dict = {}
        for group, arrays in per_run:
            logged = arrays.get(evaluator)
            if not logged:
                continue
            for key, values in logged.items():
                if key.partition("/")[0] != metric:
                    continue
                block = key.partition("/")[2]
                blocks.setdefault(block, {}).setdefault(group, []).append(
                    (logged["step"], values))
        if blocks:
            curves[(evaluator, metric)] = {
                block: {g: _align(series) for g, series in groups.items()}
                for block, groups in blocks.items()}
    return curves


def _align(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds' curves on their common steps: ``(steps (T,), values (S, T))``."""
    steps = sorted(set.intersection(*(set(s.tolist()) for s, _ in series)))
    values = np.stack([[v[list(s).index(t)] for t in steps] for s, v in series])
    return np.array(steps), values


def write_dynamics(runs: Sequence[GridRun], run_dirs: Sequence[Path],
                   out_dir: Path) -> dict[str, str]:
    """Writes ``dynamics.png`` and ``dynamics.csv`` (group, block, step, mean, min, max per
    evaluator metric); ``{}`` when no run logged these evaluators."""
    curves = _curves(runs, run_dirs)
    if not curves:
        return {}
    rows = []
    for (evaluator, metric), blocks in curves.items():
        for block, groups in blocks.items():
            for group, (steps, values) in groups.items():
                rows += [[evaluator, metric, block, group, int(t), values[:, i].mean(),
                          values[:, i].min(), values[:, i].max(), len(values)]
                         for i, t in enumerate(steps)]
    csv_path = write_csv(out_dir / "dynamics.csv", ["evaluator", "metric", "block", "group",
                                                     "step", "mean", "min", "max", "seeds"],
                         rows)
    return {"dynamics_csv": str(csv_path),
            "dynamics_png": str(_plot(curves, out_dir / "dynamics.png"))}


def _plot(curves: dict, path: Path) -> Path:
    panels = [(key, label) for *key, label in PANELS if tuple(key) in curves]
    blocks = list(curves[tuple(panels[0][0])])
    groups = list(dict.fromkeys(g for key, _ in panels for b in curves[tuple(key)].values()
                                for g in b))
    colors = dict(zip(groups, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(len(panels), len(blocks), squeeze=False,
                             figsize=(2.9 * len(blocks) + 0.6, 2.6 * len(panels) + 0.7),
                             constrained_layout=True, sharex=True)
    for row, (key, label) in enumerate(panels):
        for col, block in enumerate(blocks):
            ax = axes[row][col]
            series = curves[tuple(key)].get(block, {})
            if not series:  # e.g. weight change of pre_logits, which has no weights
                ax.set_axis_off()
                ax.text(0.5, 0.5, "not logged\nfor this layer", ha="center", va="center",
                        fontsize=8, color="0.5", transform=ax.transAxes)
                continue
            for group, (steps, values) in series.items():
                ax.plot(steps, values.mean(0), color=colors.get(group), lw=1.4, label=group)
                ax.fill_between(steps, values.min(0), values.max(0), color=colors.get(group),
                                alpha=0.2, lw=0)
            if key[1] == "linear_cka":
                ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.02)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(block, fontsize=10)
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
            if row == len(panels) - 1:
                ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Learning dynamics, logged while training: mean over seeds, band min-max",
                 fontsize=10)
    return save_figure(fig, path)
