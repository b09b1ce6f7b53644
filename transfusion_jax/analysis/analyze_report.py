"""The analyze job's page: findings stated in words, then the tables and figures behind them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transfusion_jax.analysis.checkpoint_similarity import CheckpointSimilarity
from transfusion_jax.analysis.html_report import Figure, Section, Table, write_report
from transfusion_jax.analysis.similarity_plots import band
from transfusion_jax.outputs import plt, save_figure


def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def plot_feature_change(features: CheckpointSimilarity, path: Path) -> Path:
    """Left: per layer, CKA of ``before`` with ``after`` and with each other checkpoint.
    Right: per layer, CKA with ``before`` along the after run's saved steps. Each curve with
    its bootstrap interval (shaded) and null band (hatched)."""
    cka = features.per_layer("linear_cka")  # (L, C, C); 0 = before, 1 = after
    bands = {f: features.per_layer("linear_cka", f)
             for f in ("low", "high", "null_low", "null_high")}
    colors = plt.get_cmap("tab10")(np.arange(10))
    layers, labels = features.layers, features.labels
    along = [i for i, lab in enumerate(labels) if lab.startswith("step ")]
    fig, axes = plt.subplots(1, 2 if along else 1, figsize=(11 if along else 6, 4),
                             squeeze=False)
    ax = axes[0][0]
    x = np.arange(len(layers))
    for i, label in enumerate(labels[1:], start=1):
        if i in along:
            continue
        color = colors[(i - 1) % 10]
        band(ax, x, bands["low"][:, 0, i], bands["high"][:, 0, i], color)
        band(ax, x, bands["null_low"][:, 0, i], bands["null_high"][:, 0, i], color, null=True)
        ax.plot(x, cka[:, 0, i], marker="o", color=color, label=f"{labels[0]} vs {label}")
    ax.set_xticks(x, layers, rotation=30, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("linear CKA")
    ax.set_title("Similarity to before, per layer", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if along:
        order = sorted([*along, 1], key=lambda i: features.steps[i])
        steps = [features.steps[i] for i in order]
        ax = axes[0][1]
        colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(layers)))
        for li, layer in enumerate(layers):
            band(ax, steps, bands["low"][li, 0, order], bands["high"][li, 0, order],
                 colors[li])
            band(ax, steps, bands["null_low"][li, 0, order], bands["null_high"][li, 0, order],
                 colors[li], null=True)
            ax.plot(steps, cka[li, 0, order], marker=".", color=colors[li], label=layer)
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1.02)
        ax.set_title("Similarity to before along training", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def _weight_findings(weights: Any) -> tuple[str, Table]:
    layers = [lay for lay in weights.layers if np.isfinite(lay.relative_change)]
    ranked = sorted(layers, key=lambda lay: -lay.relative_change)
    top = ", ".join(f"{lay.path} ({lay.relative_change:.3f})" for lay in ranked[:3])
    low = ", ".join(f"{lay.path} ({lay.relative_change:.3f})" for lay in ranked[-3:][::-1])
    text = (f"Relative weight change ||after - before|| / ||before|| is largest in {top} and "
            f"smallest in {low}.")
    if weights.skipped:
        text += (f" Not compared (absent or reshaped, e.g. a new head): "
                 f"{', '.join(p for p, _ in weights.skipped)}.")
    rows = [[lay.path, "x".join(map(str, lay.shape)), f"{lay.relative_change:.4f}",
             _fmt(lay.correlation, 3),
             _fmt(float(np.mean(lay.filter_correlation)) if len(lay.filter_correlation)
                  else float("nan"), 3)] for lay in weights.layers]
    return text, Table("Per layer (forward order)", ["parameter", "shape", "relative change",
                                                     "correlation", "mean filter corr."], rows)


def _feature_findings(features: CheckpointSimilarity) -> tuple[str, Table]:
    names = list(features.values)
    per_layer = {n: features.per_layer(n) for n in names}
    bands = {(n, f): features.per_layer(n, f) for n in names
             for f in ("low", "high", "null_low", "null_high")}
    warnings = {n: np.einsum("alcl->lac", features.warning_matrix(n)) for n in features.warnings}

    def interval(n, f_low, f_high, li):
        low, high = bands[(n, f_low)][li, 0, 1], bands[(n, f_high)][li, 0, 1]
        return "" if not np.isfinite(low) else f"[{low:.3f}, {high:.3f}]"

    rows = []
    for li, layer in enumerate(features.layers):
        cells = []
        for n in names:
            cells += [_fmt(per_layer[n][li, 0, 1], 3), interval(n, "low", "high", li),
                      interval(n, "null_low", "null_high", li)]
        rows.append([layer, *cells,
                     " ".join(w[li, 0, 1] for w in warnings.values() if w[li, 0, 1])])
    cka = features.per_layer("linear_cka")[:, 0, 1]
    order = np.argsort(cka)
    text = (f"Between before and after, linear CKA is lowest in {features.layers[order[0]]} "
            f"({cka[order[0]]:.2f}) and highest in {features.layers[order[-1]]} "
            f"({cka[order[-1]]:.2f}), over {features.num_examples} test images "
            "(features mean-pooled). Each value comes with a bootstrap interval over the "
            "examples and the null band of unrelated representations (examples permuted).")
    header = ["layer"]
    for n in names:
        header += [n, f"{n} interval", f"{n} null band"]
    return text, Table("Before vs after, per layer", [*header, "warning"], rows)


def _max_act_findings(comparisons: Sequence[Any]) -> tuple[str, Table]:
    rows, words = [], []
    for comp in comparisons:
        for r in comp.summary():
            rows.append([r["layer"], r["k"], _fmt(r["mean_overlap"]),
                         _fmt(r["mean_purity_before"]), _fmt(r["mean_purity_after"]),
                         str(r["dead_before"]), str(r["dead_after"])])
        first = comp.summary()[0]
        words.append(f"{first['layer']} {_fmt(first['mean_overlap'])} "
                     f"(purity {_fmt(first['mean_purity_before'])} -> "
                     f"{_fmt(first['mean_purity_after'])})")
    k = comparisons[0].ks[0] if comparisons else "?"
    text = (f"Mean top-{k} overlap of each channel's maximally activating images before and "
            f"after, by layer: {'; '.join(words)}. Purity is 1 - normalised entropy of the "
            "top images' classes (1 = one class).")
    return text, Table("Per layer", ["layer", "k", "mean overlap", "purity before",
                                     "purity after", "dead before", "dead after"], rows)


def write_analysis_report(out: Path, *, before, after, baselines, model_name: str, weights,
                          features: CheckpointSimilarity, comparisons, files: dict,
                          timings: dict[str, float]) -> tuple[Path, Path]:
    """``report.html`` / ``report.md`` of an analysis (see `analyze.run_analysis`)."""
    w_text, w_table = _weight_findings(weights)
    f_text, f_table = _feature_findings(features)
    m_text, m_table = _max_act_findings(comparisons)
    refs = [f"before: {before.run_dir} at step {before.step}",
            f"after: {after.run_dir} at step {after.step}"]
    refs += [f"baseline {b.label}: {b.run_dir}" for b in baselines]
    weights_files = files["weights"]
    sections = [
        Section("What changed", [w_text, f_text, m_text], highlight=True),
        Section("Checkpoints compared", refs),
        Section("Parameter space", [
            "Per layer, the Frobenius norm of the change relative to the norm before; per "
            "filter, the Pearson correlation of its weights before and after."],
            tables=[w_table], figures=[
                Figure(weights_files["layers_png"], "Relative weight change per layer"),
                Figure(weights_files["correlation_png"], "Per-filter correlation, per layer"),
                Figure(weights_files.get("trajectory_png", ""),
                       "Relative change of each layer along the saved steps")]),
        Section("Feature space", [
            "Linear CKA and SVCCA between the checkpoints' representations of the test "
            "images; the heatmaps include every saved step of the run and the baselines."],
            tables=[f_table], figures=[
                Figure(files["features"]["along_png"], "CKA with the before checkpoint"),
                Figure(files["features"]["png"], "CKA between all compared checkpoints")]),
        Section("Maximal activation images", [m_text], tables=[m_table], figures=[
            Figure(files["max_activation"].get("scatter", ""),
                   "Per channel: overlap of top images vs class purity"),
            Figure(files["max_activation"].get("layers_plot", ""), "Per-layer summary"),
            *[Figure(p, f"Top images before (upper row) and after (lower row): {name}")
              for name, p in sorted(files["max_activation"].items())
              if name.startswith("images_")]]),
        Section("First-layer filters", [], figures=[
            Figure(files["filters"]["png"], "conv1 filters, before and after")]),
    ]
    if files.get("feature_vis"):
        fv = files["feature_vis"]
        sections.append(Section("Feature visualisation", [
            f"Activation maximisation (Fourier-parameterised, colour-decorrelated image with "
            f"random jitter, scale and rotation; Adam) of the channels {fv['channels']} of "
            f"{fv['layer']} whose top images changed most."
            + (f" Flat (the objective did not rise, so the image shows nothing the channel "
               f"responds to): {fv['flat']}." if fv.get("flat") else "")], figures=[
                Figure(fv["png"], "Channel visualisations before (top) and after (bottom)")]))
    sections.append(Section("Timings", [], tables=[Table(
        "", ["analysis", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()])]))
    return write_report(out, f"What fine-tuning changed: {model_name}", sections)
