"""Per-layer similarity between checkpoints of different runs of one architecture.

``compare_checkpoints([("random", run_a, None), ("random@0", run_a, 0), ("pretrained",
run_b, None)])`` stacks the named checkpoints (``None`` = the newest), computes every
checkpoint pair's linear CKA per layer (and SVCCA for the pairs asked) in one vmapped,
streamed pass over the data (`stacked_similarity`), and returns ``(L, C, C)`` matrices.
This is the feature-space comparison of Transfusion and Gonthier et al.: a fine-tuned model
vs its own initialisation, pretrained vs random init, and the baseline of two random inits.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from transfusion_jax.analysis.activations import layer_names  # noqa: E402
from transfusion_jax.analysis.stacked_similarity import (  # noqa: E402
    same_layer_pairs,
    streamed_similarity,
)
from transfusion_jax.analysis.trajectory import (  # noqa: E402
    Trajectory,
    checkpoint_steps,
    load_trajectory,
    run_config,
)
from transfusion_jax.config import ConfigError  # noqa: E402

Ref = tuple[str, str | Path, int | None]  # (label, run_dir, step or None for the newest)


@dataclasses.dataclass
class CrossRunSimilarity:
    """``linear_cka`` / ``svcca``: ``(L, C, C)`` per layer (NaN where not computed)."""

    labels: list[str]
    layers: list[str]
    steps: list[int]
    matrices: dict[str, np.ndarray]
    num_examples: int


def parse_ref(spec: str) -> tuple[Path, int | None]:
    """``"RUN_DIR[@STEP]"`` -> ``(run_dir, step or None)``."""
    path, _, step = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if step and not step.isdigit():
        raise ConfigError(f"{spec!r}: the part after @ must be a checkpoint step")
    return Path(path), (int(step) if step else None)


def load_checkpoints(refs: Sequence[Ref]) -> tuple[Trajectory, list[int]]:
    """The checkpoints of ``refs`` stacked into one `Trajectory` (the first run's setup).

    Raises:
      ConfigError: runs of different architectures (they cannot be stacked), or a step that
        is not a checkpoint.
    """
    loaded, steps = [], []
    first = None
    for label, run_dir, step in refs:
        config = run_config(run_dir)
        arch = (config.model.to_dict(), config.data.image_size, config.data.channels)
        if first is None:
            first = (arch, run_dir)
        elif arch != first[0]:
            raise ConfigError(f"{label!r} ({run_dir}) is not the same architecture as "
                              f"{first[1]}; only checkpoints of one model can be compared")
        chosen = checkpoint_steps(run_dir)[-1] if step is None else step
        loaded.append(load_trajectory(run_dir, (chosen,), config=config))
        steps.append(chosen)
    num_classes = {traj.setup.meta.num_classes for traj in loaded}
    if len(num_classes) > 1:
        raise ConfigError(f"the runs have heads of different sizes {sorted(num_classes)}; "
                          "compare runs trained on the same label set")
    variables = {k: _concat([t.variables[k] for t in loaded]) for k in loaded[0].variables}
    base = loaded[0]
    return Trajectory(base.config, base.setup, steps, variables), steps


def _concat(trees):
    return jax.tree.map(lambda *xs: np.concatenate(xs), *trees)


def compare_checkpoints(refs: Sequence[Ref], *, layers: Sequence[str] = (), split: str = "",
                        max_examples: int = 1000, batch_size: int = 250,
                        reduction: str = "mean_pool", svcca: bool = True,
                        svcca_keep: float = 0.99,
                        svcca_only: Sequence[tuple[int, int]] | None = None
                        ) -> CrossRunSimilarity:
    """Every pair of ``refs``' checkpoints, per layer, on the first run's eval data.

    Args:
      refs: ``[(label, run_dir, step or None)]``.
      layers: model outputs (default: every block and ``pre_logits``).
      split: data split (default: the first run's eval split).
      max_examples, batch_size, reduction: as in the similarity sweep.
      svcca: also SVCCA (one eigendecomposition per pair and layer).
      svcca_only: SVCCA only for these ``(checkpoint, checkpoint)`` index pairs (every layer);
        None = all pairs.
    """
    traj, steps = load_checkpoints(refs)
    model, data = traj.setup.model, traj.config.data
    valid = layer_names(model, traj.setup.input_shape)
    layers = list(layers) or [n for n in valid if n not in ("logits",)]
    unknown = sorted(set(layers) - set(valid))
    if unknown:
        raise ConfigError(f"layers {unknown} are not outputs of the model; valid: {valid}")
    num_c, num_l = len(refs), len(layers)
    pairs = same_layer_pairs(num_c, num_l)
    svcca_pairs: Sequence[int] = ()
    if svcca:
        wanted = None if svcca_only is None else {tuple(sorted(p)) for p in svcca_only}
        svcca_pairs = [q for q, (i, j) in enumerate(pairs // num_l)
                       if wanted is None or (int(i), int(j)) in wanted]
    streamed = streamed_similarity(
        model, traj.variables, layers, data, split or data.eval_split, pairs=pairs,
        reduction=reduction, batch_size=batch_size, max_examples=max_examples,
        svcca_pairs=svcca_pairs, svcca_keep=svcca_keep)
    matrices = {}
    for name, values in streamed.values.items():
        m = np.full((num_l, num_c, num_c), np.nan)
        c1, layer = pairs[:, 0] // num_l, pairs[:, 0] % num_l
        c2 = pairs[:, 1] // num_l
        m[layer, c1, c2] = values
        m[layer, c2, c1] = values
        matrices[name] = m
    return CrossRunSimilarity([r[0] for r in refs], layers, steps, matrices,
                              streamed.num_examples)


def write_cross_run(result: CrossRunSimilarity, out_dir: str | Path, *,
                    title: str = "") -> dict[str, str]:
    """``cross_run.csv`` (one row per pair and layer), ``cross_run.json`` and
    ``cross_run.png`` (one heatmap of linear CKA per layer)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(result.matrices)
    with open(out / "cross_run.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "a", "b", *names])
        for li, layer in enumerate(result.layers):
            for i, a in enumerate(result.labels):
                for j in range(i + 1, len(result.labels)):
                    w.writerow([layer, a, result.labels[j],
                                *[f"{result.matrices[n][li, i, j]:.6f}" for n in names]])
    (out / "cross_run.json").write_text(json.dumps(
        {"labels": result.labels, "layers": result.layers, "steps": result.steps,
         "num_examples": result.num_examples,
         **{n: result.matrices[n].tolist() for n in names}}, indent=1) + "\n")
    png = plot_cross_run(result.matrices["linear_cka"], result.labels, result.layers,
                         out / "cross_run.png", title=title)
    return {"csv": str(out / "cross_run.csv"), "json": str(out / "cross_run.json"),
            "png": str(png)}


def plot_cross_run(matrices: np.ndarray, labels: Sequence[str], layers: Sequence[str],
                   path: Path, *, title: str = "", what: str = "linear CKA") -> Path:
    """One ``C x C`` heatmap per layer, annotated when small enough to read."""
    num_l, num_c = len(layers), len(labels)
    cell = max(2.4, 0.42 * num_c + 1.2)
    fig, axes = plt.subplots(1, num_l, figsize=(cell * num_l + 0.8, cell + 0.9),
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
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
