"""Figures of checkpoint similarities: similarity to the first checkpoint over training, the
layer x layer matrix at the last checkpoint, checkpoint x checkpoint per layer
(`plot_similarity`, the similarity job), and labelled per-layer heatmaps (`plot_per_layer`,
the analyze job and the sweep report)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transfusion_jax.outputs import plt, save_figure

LABELS = {"linear_cka": "linear CKA", "svcca": "SVCCA (mean canonical correlation)"}


def _heatmap(ax, matrix: np.ndarray, ticks: list[str], title: str) -> None:
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="magma")
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
                    matrices: dict[str, np.ndarray]) -> dict[str, str]:
    """Writes ``to_init.png``, ``layers_final.png`` and ``checkpoints.png``.

    Args:
      matrices: name -> ``(C, L, C, L)`` similarity arrays.
    """
    names = list(matrices)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False,
                             constrained_layout=True)
    for ax, name in zip(axes[0], names, strict=True):
        m = matrices[name]
        for layer_index, layer in enumerate(layers):
            ax.plot(steps, m[0, layer_index, :, layer_index], "o-", markersize=3, label=layer)
        ax.set(xlabel="training step", ylabel=LABELS.get(name, name), ylim=(0, 1.02),
               title=f"{LABELS.get(name, name)} to step {steps[0]}, per layer")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    save_figure(fig, workdir / "to_init.png")

    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.4), squeeze=False,
                             constrained_layout=True)
    for ax, name in zip(axes[0], names, strict=True):
        image = _heatmap(ax, matrices[name][-1, :, -1, :], layers,
                         f"{LABELS.get(name, name)}, layer x layer at step {steps[-1]}")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    save_figure(fig, workdir / "layers_final.png")

    cols = min(4, len(layers))
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False,
                             constrained_layout=True)
    tick = [str(s) for s in steps]
    for index, layer in enumerate(layers):
        ax = axes[index // cols][index % cols]
        image = _heatmap(ax, matrices["linear_cka"][:, index, :, index], tick,
                         f"{layer}: linear CKA, step x step")
    for index in range(len(layers), rows * cols):
        axes[index // cols][index % cols].axis("off")
    fig.suptitle("linear CKA between checkpoints, per layer (training steps on both axes)")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6)
    save_figure(fig, workdir / "checkpoints.png")
    return {name: str(workdir / f"{name}.png")
            for name in ("to_init", "layers_final", "checkpoints")}


def plot_per_layer(matrices: np.ndarray, labels: Sequence[str], layers: Sequence[str],
                   path: Path, *, title: str = "", what: str = "linear CKA") -> Path:
    """One labelled ``C x C`` heatmap per layer, annotated when small enough to read.

    Args:
      matrices: ``(L, C, C)`` similarities (NaN cells are left blank).
      labels: the ``C`` row/column labels; layers: the ``L`` panel titles.
    """
    num_l, num_c = len(layers), len(labels)
    size = max(2.4, 0.42 * num_c + 1.2)
    fig, axes = plt.subplots(1, num_l, figsize=(size * num_l + 0.8, size + 0.9),
                             squeeze=False)
    for li, ax in enumerate(axes[0]):
        im = ax.imshow(matrices[li], vmin=0, vmax=1, cmap="viridis")
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
    fig.suptitle(title or f"{what} between checkpoints, per layer", fontsize=11)
    return save_figure(fig, path, bbox_inches="tight")
