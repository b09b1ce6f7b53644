"""Per-layer similarity of a sweep's trained models: to their own init and to each other.

Every finished run contributes two checkpoints, its initialisation (step 0) and its final
state; all of them (per architecture) are compared in one stacked, streamed pass of the
checkpoint-similarity pipeline (`transfusion_jax.analysis.checkpoint_similarity`). From the
``(L, C, C)`` matrices come:

- **to init**: per run and layer, CKA / SVCCA of the trained model with its own
  initialisation (how far each layer moved; Transfusion's learning-dynamics figure);
- **between groups**: per layer, the mean CKA of trained models of group ``a`` and group
  ``b`` over runs of the *same* seed (``a != b``), and over pairs of *different* seeds
  within a group (the diagonal: Transfusion's "random vs random" baseline; NaN with one seed).

Every value comes with a bootstrap interval over the examples and a null band (the same
statistic between examples-permuted representations), from the pipeline's replicates
(`similarity_uncertainty`); a mean over pairs gets the interval of the same mean over each
replicate. An SVCCA value on fewer than 10 examples per feature carries a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transfusion_jax.analysis.checkpoint_similarity import (
    CheckpointRef,
    checkpoint_pairs,
    checkpoint_similarity,
    resolve_layers,
    stack_checkpoints,
)
from transfusion_jax.analysis.similarity_plots import band, plot_per_layer
from transfusion_jax.analysis.similarity_uncertainty import COLUMNS, UncertaintyOptions
from transfusion_jax.experiments.grid import GridRun, group_label
from transfusion_jax.outputs import nan_to_none, plt, save_figure, write_csv_dicts
from transfusion_jax.similarity import intervals, resample

log = logging.getLogger(__name__)


def _between(cka: np.ndarray, finals: list[int], groups: list[str], seeds: list[int],
             names: list[str]) -> np.ndarray:
    """``(..., L, G, G)`` mean CKA between groups' trained models (see the module
    docstring) from ``(..., L, C, C)``."""
    g_index = {g: i for i, g in enumerate(names)}
    num_g = len(names)
    total = np.zeros((*cka.shape[:-2], num_g, num_g))
    count = np.zeros((num_g, num_g))
    for x, (cx, gx, sx) in enumerate(zip(finals, groups, seeds, strict=True)):
        for cy, gy, sy in list(zip(finals, groups, seeds, strict=True))[x + 1:]:
            if (gx == gy) == (sx == sy):  # same group: other seeds; other group: same seed
                continue
            a, b = g_index[gx], g_index[gy]
            total[..., a, b] += cka[..., cx, cy]
            count[a, b] += 1
            if a != b:
                total[..., b, a] += cka[..., cx, cy]
                count[b, a] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _final_pairs(groups: list[str], seeds: list[int]) -> list[tuple[int, int]]:
    """Checkpoint pairs of trained models that `_between` averages."""
    out = []
    for x in range(len(groups)):
        for y in range(x + 1, len(groups)):
            if (groups[x] == groups[y]) != (seeds[x] == seeds[y]):
                out.append((2 * x + 1, 2 * y + 1))
    return out


def group_similarity(runs: Sequence[GridRun], run_dirs: Sequence[Path], out_dir: Path, *,
                     max_examples: int = 1000, reduction: str = "mean_pool",
                     svcca: bool = True,
                     uncertainty: UncertaintyOptions | None = None) -> dict[str, str]:
    """Writes ``to_init.csv``, ``between.csv``, ``to_init.png``, ``between.png``.

    Args:
      runs, run_dirs: the finished runs (one architecture) and their workdirs.
      out_dir: where the files go.
      max_examples, reduction: as in `checkpoint_similarity`.
      svcca: also SVCCA of each trained model to its own initialisation.
      uncertainty: bootstrap and null replicates (intervals and null bands; None: none).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    refs = []
    for run, d in zip(runs, run_dirs, strict=True):
        refs += [CheckpointRef(f"{run.name}@init", d, 0), CheckpointRef(run.name, d)]
    stacked = stack_checkpoints(refs)
    layers = resolve_layers(stacked)
    to_init = [(2 * i, 2 * i + 1) for i in range(len(runs))]
    groups = [group_label(r.axes) for r in runs]
    seeds = [r.seed for r in runs]
    result = checkpoint_similarity(
        stacked, layers=layers, max_examples=max_examples, reduction=reduction,
        svcca_pairs=checkpoint_pairs(to_init, len(layers)) if svcca else None,
        uncertainty=uncertainty,
        interval_pairs=checkpoint_pairs(to_init + _final_pairs(groups, seeds), len(layers)))
    matrices = {column: result.per_layer(name, f) for column, name, f in _fields(result)}
    warnings = {n: np.einsum("alcl->lac", result.warning_matrix(n)) for n in result.warnings}
    names = list(dict.fromkeys(groups))
    finals = [2 * i + 1 for i in range(len(runs))]
    rows = []
    for i, run in enumerate(runs):
        for li, layer in enumerate(layers):
            values = {k: float(m[li, 2 * i, 2 * i + 1]) for k, m in matrices.items()}
            warning = " ".join(w[li, 2 * i, 2 * i + 1] for w in warnings.values()
                               if w[li, 2 * i, 2 * i + 1])
            rows.append({"group": groups[i], "seed": run.seed, "layer": layer, **values,
                         "warning": warning})
    write_csv_dicts(out_dir / "to_init.csv", rows)
    between = _between(result.per_layer("linear_cka"), finals, groups, seeds, names)
    reps = resample.Replicates(*(
        None if r is None else _between(r, finals, groups, seeds, names).reshape(len(r), -1)
        for r in (result.replicates_per_layer("linear_cka", k) for k in ("boot", "null"))))
    options = uncertainty or UncertaintyOptions()
    s = intervals.summarize(between.ravel(), reps, options.confidence, interval=options.interval)
    s = intervals.Summary(*(np.reshape(a, between.shape) for a in s))
    write_csv_dicts(out_dir / "between.csv", [
        {"layer": layer, "group_a": a, "group_b": b, "linear_cka": float(between[li, i, j]),
         **{f"linear_cka_{x}": float(getattr(s, f)[li, i, j]) for f, x in COLUMNS.items()}}
        for li, layer in enumerate(layers) for i, a in enumerate(names)
        for j, b in enumerate(names) if j >= i])
    (out_dir / "similarity.json").write_text(json.dumps(
        {"layers": layers, "groups": names, "num_examples": result.num_examples,
         "reduction": reduction, "between_linear_cka": nan_to_none(between),
         **{f"between_linear_cka_{x}": nan_to_none(getattr(s, f)) for f, x in COLUMNS.items()},
         "warnings": sorted({w for ws in result.warnings.values() for w in ws if w})},
        indent=1) + "\n")
    files = {"to_init_csv": str(out_dir / "to_init.csv"),
             "between_csv": str(out_dir / "between.csv")}
    files["to_init_png"] = str(_plot_to_init(rows, names, layers, out_dir / "to_init.png"))
    files["between_png"] = str(plot_per_layer(
        between, names, layers, out_dir / "between.png", null_high=s.null_high,
        title="Linear CKA between trained models (diagonal: same init, other seeds)"))
    log.info("group similarity: %d checkpoints x %d layers over %d examples", len(refs),
             len(layers), result.num_examples)
    return files


def _fields(result) -> list[tuple[str, str, str]]:
    """``(column, measure, Summary field)``: each measure's value, interval, null band."""
    return [(f"{n}{'_' + x if x else ''}", n, f) for n in result.values
            for f, x in (("value", ""), *COLUMNS.items())]


def _plot_to_init(rows: list[dict], names: list[str], layers: list[str], path: Path) -> Path:
    metrics = [m for m in ("linear_cka", "svcca") if m in rows[0]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    x = np.arange(len(layers))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for gi, name in enumerate(names):
            values = np.array([[r[metric] for r in rows if r["group"] == name
                                and r["layer"] == layer] for layer in layers])  # (L, seeds)
            mean = values.mean(1)
            err = np.stack([mean - values.min(1), values.max(1) - mean])
            line = ax.errorbar(x + (gi - len(names) / 2) * 0.04, mean, yerr=err, marker="o",
                               capsize=3, label=name)
            if f"{metric}_null_low" in rows[0]:
                null = [np.array([[r[f"{metric}_null_{k}"] for r in rows
                                   if r["group"] == name and r["layer"] == layer]
                                  for layer in layers]).mean(1) for k in ("low", "high")]
                band(ax, x, *null, line.lines[0].get_color(), null=True)
        ax.set_xticks(x, layers, rotation=30, ha="right")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(f"{metric.replace('_', ' ')}(trained, own init)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("How far each layer moved from its initialisation (mean, min-max over seeds;"
                 "\nhatched: null band of unrelated representations, mean over seeds)",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
