"""Files of a maximal-activation comparison (`max_activation`): per-channel and per-layer
CSVs, the overlap-vs-purity scatter, per-layer summary bars, and grids of the top images of
chosen channels before and after."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transfusion_jax.analysis.max_activation import TopKResult
from transfusion_jax.analysis.max_activation_compare import ChannelComparison
from transfusion_jax.outputs import plt, save_figure, write_csv, write_csv_dicts
from transfusion_jax.paths import to_path

CHANNEL_COLUMNS = ("layer", "channel", "k", "overlap", "purity_before", "purity_after",
                   "entropy_before", "entropy_after", "size_before", "size_after",
                   "positive_before", "positive_after", "dead_before", "dead_after")


def write_max_activation(workdir: str | Path, comparisons: Sequence[ChannelComparison],
                         results: dict[str, TopKResult] | None = None) -> dict[str, str]:
    """Writes the tables of a comparison.

    - ``max_activation_channels.csv``: one row per layer, channel and k (`CHANNEL_COLUMNS`;
      ``size_*`` = ``|A_k|``, ``positive_*`` = images with a positive score, ``dead_*`` 0/1;
      NaN where undefined, see `max_activation`);
    - ``max_activation_layers.csv``: the `ChannelComparison.summary` rows;
    - with ``results``, ``max_activation_topk.npz``: ``{layer}/indices``, ``{layer}/scores``
      ``(C, channels, k)`` and ``{layer}/num_positive`` ``(C, channels)``.

    Returns:
      ``{name: path}`` of the files written.
    """
    workdir = to_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    files = {"channels": str(workdir / "max_activation_channels.csv"),
             "layers": str(workdir / "max_activation_layers.csv")}
    channel_rows = []
    for comp in comparisons:
        for key in comp.ks:
            floats = [comp.overlap[key], comp.purity_before[key], comp.purity_after[key],
                      comp.entropy_before[key], comp.entropy_after[key]]
            ints = [comp.size_before[key], comp.size_after[key], comp.num_positive_before,
                    comp.num_positive_after, comp.dead_before, comp.dead_after]
            for ch in range(len(comp.num_positive_before)):
                channel_rows.append([comp.layer, ch, key, *[float(v[ch]) for v in floats],
                                     *[int(v[ch]) for v in ints]])
    write_csv(files["channels"], CHANNEL_COLUMNS, channel_rows)
    rows = [row for comp in comparisons for row in comp.summary()]
    write_csv_dicts(files["layers"], rows, header=() if rows else ("layer",))
    if results:
        files["topk"] = str(workdir / "max_activation_topk.npz")
        np.savez(files["topk"], **{f"{name}/{field}": getattr(r, field)
                                   for name, r in results.items()
                                   for field in ("indices", "scores", "num_positive")})
    return files


def plot_overlap_purity(path: str | Path, comparisons: Sequence[ChannelComparison],
                        k: str) -> str:
    """Per channel, x = overlap, y = purity before (left) and after (right), one colour per
    layer; channels whose overlap or purity is undefined (dead) are left out."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True, constrained_layout=True)
    colors = plt.get_cmap("tab10")
    for ax, side in zip(axes, ("before", "after"), strict=True):
        for i, comp in enumerate(comparisons):
            purity = getattr(comp, f"purity_{side}")[k]
            ax.scatter(comp.overlap[k], purity, s=16, alpha=0.7, color=colors(i % 10),
                       marker="os^Dv<>p"[i % 8], label=f"{comp.layer} ({len(purity)} ch)")
        ax.set(xlabel=f"overlap of top-{k} sets, before vs after", xlim=(-0.03, 1.03),
               ylim=(-0.03, 1.03), title=f"class purity of the top-{k}, {side}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("purity = 1 - H / log(num classes)")
    axes[1].legend(fontsize=7, loc="best")
    save_figure(fig, path, dpi=110)
    return str(path)


def plot_layer_summary(path: str | Path, comparisons: Sequence[ChannelComparison],
                       k: str) -> str:
    """Per layer: mean (bar) and median (dot) overlap, mean purity before/after, and the
    number of dead channels before/after."""
    rows = [next(r for r in comp.summary() if r["k"] == k) for comp in comparisons]
    names = [r["layer"] for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(3 * max(3.2, 0.6 * len(rows) + 0.8), 3.6),
                             constrained_layout=True)
    axes[0].bar(x, [r["mean_overlap"] for r in rows], color="tab:blue", label="mean")
    axes[0].plot(x, [r["median_overlap"] for r in rows], "o", color="black", label="median")
    axes[0].set(ylim=(0, 1.02), title=f"top-{k} overlap, before vs after")
    axes[0].legend(fontsize=7)
    width = 0.38
    for ax, key, title in ((axes[1], "mean_purity", "mean class purity of the top-" + k),
                           (axes[2], "dead", "dead channels (never positive)")):
        ax.bar(x - width / 2, [r[f"{key}_before"] for r in rows], width, label="before",
               color="tab:gray")
        ax.bar(x + width / 2, [r[f"{key}_after"] for r in rows], width, label="after",
               color="tab:orange")
        ax.set_title(title)
        ax.legend(fontsize=7)
        if key == "dead":
            for bars in ax.containers:
                ax.bar_label(bars, fontsize=7)
    axes[1].set_ylim(0, 1.02)
    axes[2].set_ylim(0, max(1, *[max(r["dead_before"], r["dead_after"]) for r in rows]) * 1.15)
    for ax in axes:
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path, dpi=110)
    return str(path)


def channels_to_show(comp: ChannelComparison, k: str, count: int) -> np.ndarray:
    """``count`` channels alive before and after, evenly spread from the lowest overlap to
    the highest (ascending overlap)."""
    overlap = comp.overlap[k]
    alive = np.flatnonzero(~comp.dead_before & ~comp.dead_after & ~np.isnan(overlap))
    ranked = alive[np.argsort(overlap[alive], kind="stable")]
    if len(ranked) <= count:
        return ranked
    return ranked[np.round(np.linspace(0, len(ranked) - 1, count)).astype(int)]


def _show(ax, image: np.ndarray) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_top_images(path: str | Path, source: Any, result: TopKResult,
                    comp: ChannelComparison, channels: Sequence[int], *, k: str,
                    shown: int = 8, a: int = 0, b: int = 1) -> str:
    """Per channel, its ``shown`` top images before (row 1) and after (row 2).

    Args:
      source: the random-access source the pass read, in the same order
        (``source[i]["image"]`` uint8 ``(h, w, c)``; one channel is drawn grey).
      result, comp: the layer's `TopKResult` and its `ChannelComparison`.
      channels: channels to draw, one row pair each.
      k: the k label whose overlap and purity the captions give.
      a, b: the checkpoints drawn as before and after.
    """
    shown = min(shown, result.k)
    rows = 2 * len(channels)
    fig, axes = plt.subplots(rows, shown, squeeze=False, figsize=(0.95 * shown + 0.5,
                                                                  1.2 * rows + 0.7),
                             gridspec_kw={"hspace": 0.45, "wspace": 0.08})
    fig.subplots_adjust(left=0.5 / (0.95 * shown + 0.5), right=0.99, bottom=0.02,
                        top=1 - 0.7 / (1.2 * rows + 0.7))
    for row, ch in enumerate(channels):
        for side, (c, name) in enumerate(((a, "before"), (b, "after"))):
            for col in range(shown):
                ax = axes[2 * row + side][col]
                index, score = int(result.indices[c, ch, col]), result.scores[c, ch, col]
                _show(ax, source[index]["image"])
                label = result.labels[index]
                caption = f"y={label}" if np.ndim(label) == 0 else f"#{index}"
                ax.set_xlabel(f"{caption}  {score:.2g}", fontsize=6, labelpad=1)
            axes[2 * row + side][0].set_ylabel(name, fontsize=8)
        axes[2 * row][0].set_title(
            f"{comp.layer} channel {ch}: overlap@{k} = {comp.overlap[k][ch]:.2f}, purity "
            f"{comp.purity_before[k][ch]:.2f} -> {comp.purity_after[k][ch]:.2f}",
            fontsize=8, loc="left")
    fig.suptitle("top images per channel (caption: label, score = mean ReLU activation)",
                 fontsize=9)
    save_figure(fig, path, dpi=110)
    return str(path)


def plot_max_activation(workdir: str | Path, comparisons: Sequence[ChannelComparison],
                        results: dict[str, TopKResult] | None = None, source: Any = None, *,
                        k: str | None = None, channels_shown: int = 6,
                        images_shown: int = 8) -> dict[str, str]:
    """Writes ``max_activation_scatter.png``, ``max_activation_layers.png`` and, given
    ``results`` and ``source``, ``max_activation_images_{layer}.png`` per layer.

    Args:
      k: the k label plotted (default: the first of the comparisons).
    """
    workdir = to_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    k = k or comparisons[0].ks[0]
    files = {"scatter": plot_overlap_purity(workdir / "max_activation_scatter.png",
                                            comparisons, k),
             "layers_plot": plot_layer_summary(workdir / "max_activation_layers.png",
                                               comparisons, k)}
    if results is not None and source is not None:
        for comp in comparisons:
            channels = channels_to_show(comp, k, channels_shown)
            if len(channels):
                files[f"images_{comp.layer}"] = plot_top_images(
                    workdir / f"max_activation_images_{comp.layer}.png", source,
                    results[comp.layer], comp, channels, k=k, shown=images_shown)
    return files
