"""Figures of checkpoint similarities: similarity to the first checkpoint over training, the
layer x layer matrix at the last checkpoint, checkpoint x checkpoint per layer
(`plot_similarity`, the similarity job), and labelled per-layer heatmaps (`plot_per_layer`,
the analyze job and the sweep report).

Uncertainty: a curve carries its bootstrap interval as a shaded band and its null band (the
value of unrelated representations of the same sizes) as a hatched band of the same colour;
a heatmap cell whose value lies inside its null band is hatched (indistinguishable from
unrelated representations)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transfusion_jax.outputs import plt, save_figure

LABELS = {"linear_cka": "linear CKA", "svcca": "SVCCA (mean canonical correlation)"}


def band(ax, x, low, high, color, *, null: bool = False, label: str | None = None) -> None:
    """Draws an interval (shaded) or a null band (hatched, outlined) between ``low`` and
    ``high`` over ``x``; NaN points are left out."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    ok = np.isfinite(low) & np.isfinite(high)
    if not ok.any():
        return
    x = np.asarray(x)[ok]
    if null:
        ax.fill_between(x, low[ok], high[ok], facecolor="none", edgecolor=color, hatch="///",
                        linewidth=0.0, alpha=0.5, label=label)
        ax.plot(x, high[ok], ":", color=color, linewidth=0.8)
    else:
        ax.fill_between(x, low[ok], high[ok], color=color, alpha=0.22, linewidth=0,
                        label=label)


def hatch_null(ax, matrix: np.ndarray, null_high: np.ndarray | None) -> None:
    """Hatches the cells of a heatmap whose value is not above its null band's top."""
    if null_high is None:
        return
    from matplotlib.patches import Rectangle

    for (i, j), value in np.ndenumerate(matrix):
        top = null_high[i, j]
        if np.isfinite(value) and np.isfinite(top) and value <= top:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx",
                                   edgecolor="0.6", linewidth=0))


def _heatmap(ax, matrix: np.ndarray, ticks: list[str], title: str,
             null_high: np.ndarray | None = None) -> None:
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="magma")
    hatch_null(ax, matrix, null_high)
    ax.set_xticks(range(len(ticks)), ticks, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(ticks)), ticks, fontsize=7)
    ax.set_title(title, fontsize=9)
    if len(ticks) <= 12:
        for (i, j), value in np.ndenumerate(matrix):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if value < 0.6 else "black")
    return image


def plot_similarity(workdir: Path, steps: list[int], layers: list[str],
                    matrices: dict[str, np.ndarray],
                    bands: dict[str, np.ndarray] | None = None) -> dict[str, str]:
    """Writes ``to_init.png``, ``layers_final.png`` and ``checkpoints.png``.

    Args:
      matrices: name -> ``(C, L, C, L)`` similarity arrays.
      bands: ``{name}_low``, ``_high``, ``_null_low``, ``_null_high`` -> ``(C, L, C, L)``
        (NaN: none), drawn as bands on the curves and as hatching on the heatmaps.
    """
    names = list(matrices)
    # Only bands with numbers (bootstrap = null = 0 gives all-NaN ones).
    bands = {k: b for k, b in (bands or {}).items() if np.isfinite(b).any()}
    nan = np.full_like(next(iter(matrices.values())), np.nan)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False,
                             constrained_layout=True)
    colors = plt.get_cmap("tab10")(np.arange(len(layers)) % 10)
    for ax, name in zip(axes[0], names, strict=True):
        m = matrices[name]
        b = {k: bands.get(f"{name}_{k}", nan) for k in ("low", "high", "null_low",
                                                         "null_high")}
        for li, layer in enumerate(layers):
            def curve(a, li=li):
                return a[0, li, :, li]

            band(ax, steps, curve(b["low"]), curve(b["high"]), colors[li])
            band(ax, steps, curve(b["null_low"]), curve(b["null_high"]), colors[li], null=True)
            ax.plot(steps, curve(m), "o-", markersize=3, color=colors[li], label=layer)
        ax.set(xlabel="training step", ylabel=LABELS.get(name, name), ylim=(0, 1.02),
               title=f"{LABELS.get(name, name)} to step {steps[0]}, per layer")
        ax.grid(alpha=0.3)
    # The legend goes on the first panel, lower left: CCA-family null bands sit higher.
    if bands:
        axes[0][0].plot([], [], color="0.5", linewidth=6, alpha=0.3, label="bootstrap interval")
        axes[0][0].fill_between([], [], [], facecolor="none", edgecolor="0.5", hatch="///",
                                label="null band (examples permuted)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    save_figure(fig, workdir / "to_init.png")

    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.4), squeeze=False,
                             constrained_layout=True)
    for ax, name in zip(axes[0], names, strict=True):
        null_high = bands.get(f"{name}_null_high")
        image = _heatmap(ax, matrices[name][-1, :, -1, :], layers,
                         f"{LABELS.get(name, name)}, layer x layer at step {steps[-1]}",
                         None if null_high is None else null_high[-1, :, -1, :])
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    save_figure(fig, workdir / "layers_final.png")

    cols = min(4, len(layers))
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False,
                             constrained_layout=True)
    tick = [str(s) for s in steps]
    for index, layer in enumerate(layers):
        ax = axes[index // cols][index % cols]
        null_high = bands.get("linear_cka_null_high")
        image = _heatmap(ax, matrices["linear_cka"][:, index, :, index], tick,
                         f"{layer}: linear CKA, step x step",
                         None if null_high is None else null_high[:, index, :, index])
    for index in range(len(layers), rows * cols):
        axes[index // cols][index % cols].axis("off")
    fig.suptitle("linear CKA between checkpoints, per layer (training steps on both axes)"
                 + ("; hatched: inside the null band" if bands else ""))
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6)
    save_figure(fig, workdir / "checkpoints.png")
    return {name: str(workdir / f"{name}.png")
            for name in ("to_init", "layers_final", "checkpoints")}


def plot_per_layer(matrices: np.ndarray, labels: Sequence[str], layers: Sequence[str],
                   path: Path, *, title: str = "", what: str = "linear CKA",
                   null_high: np.ndarray | None = None) -> Path:
    """One labelled ``C x C`` heatmap per layer, annotated when small enough to read.

    Args:
      matrices: ``(L, C, C)`` similarities (NaN cells are left blank).
      labels: the ``C`` row/column labels; layers: the ``L`` panel titles.
      null_high: ``(L, C, C)`` tops of the null bands: cells not above theirs are hatched.
    """
    num_l, num_c = len(layers), len(labels)
    size = max(2.4, 0.42 * num_c + 1.2)
    fig, axes = plt.subplots(1, num_l, figsize=(size * num_l + 0.8, size + 0.9),
                             squeeze=False)
    for li, ax in enumerate(axes[0]):
        im = ax.imshow(matrices[li], vmin=0, vmax=1, cmap="viridis")
        hatch_null(ax, matrices[li], None if null_high is None else null_high[li])
        ax.set_title(layers[li], fontsize=10)
        ax.set_xticks(range(num_c), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(num_c), labels if li == 0 else [""] * num_c, fontsize=8)
        if num_c <= 8:
            for i in range(num_c):
                for j in range(num_c):
                    v = matrices[li, i, j]
                    ax.text(j, i, "" if np.isnan(v) else f"{v:.2f}", ha="center",
                            va="center", fontsize=7, color="w" if v < 0.6 else "k")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=what)
    if null_high is not None and np.isfinite(null_high).any():
        title = (title or f"{what} between checkpoints, per layer") + \
            "\n(hatched: inside the null band of unrelated representations)"
    fig.suptitle(title or f"{what} between checkpoints, per layer", fontsize=11)
    return save_figure(fig, path, bbox_inches="tight")
