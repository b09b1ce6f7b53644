"""Files of a checkpoint-similarity result (`checkpoint_similarity.CheckpointSimilarity`).

- `write_job_files`: the similarity job's ``similarity.npz``, ``similarity_pairs.csv``,
  ``to_init.csv``, ``similarity.json`` and figures (`similarity_plots.plot_similarity`);
- `write_per_layer`: per-layer checkpoint x checkpoint tables (``cross_run.csv``,
  ``cross_run.json``) and heatmaps (``cross_run.png``), as the analyze job writes them.

Tables go through `transfusion_jax.outputs`: a measure not computed for a pair is an empty
cell, never a literal ``nan``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from transfusion_jax.analysis.checkpoint_similarity import CheckpointSimilarity
from transfusion_jax.analysis.similarity_plots import plot_per_layer, plot_similarity
from transfusion_jax.outputs import nan_to_none, write_csv


def write_job_files(workdir: Path, result: CheckpointSimilarity,
                    info: dict[str, Any]) -> dict[str, str]:
    """Writes the similarity job's files into ``workdir``; returns ``{name: path}``."""
    workdir.mkdir(parents=True, exist_ok=True)
    steps, layers, num_l = result.steps, result.layers, len(result.layers)
    names = list(result.values)
    matrices = {n: result.matrix(n) for n in names}
    np.savez(workdir / "similarity.npz", steps=np.array(steps), layers=np.array(layers),
             pairs=result.pairs, **matrices)
    write_csv(workdir / "similarity_pairs.csv",
              ["step_a", "layer_a", "step_b", "layer_b", *names],
              ([steps[i // num_l], layers[i % num_l], steps[j // num_l], layers[j % num_l],
                *[result.values[n][q] for n in names]]
               for q, (i, j) in enumerate(result.pairs.tolist())))
    write_csv(workdir / "to_init.csv", ["step", "layer", *[f"{n}_to_first" for n in names]],
              ([step, layer, *[matrices[n][0, li, c, li] for n in names]]
               for c, step in enumerate(steps) for li, layer in enumerate(layers)))
    pngs = plot_similarity(workdir, steps, layers, matrices)
    (workdir / "similarity.json").write_text(json.dumps(
        {**info, "steps": steps, "layers": layers, "num_pairs": len(result.pairs)},
        indent=2) + "\n")
    return {"npz": str(workdir / "similarity.npz"),
            "pairs_csv": str(workdir / "similarity_pairs.csv"),
            "to_init_csv": str(workdir / "to_init.csv"), **pngs}


def write_per_layer(result: CheckpointSimilarity, out_dir: str | Path, *,
                    title: str = "") -> dict[str, str]:
    """``cross_run.csv`` (one row per checkpoint pair and layer), ``cross_run.json`` and
    ``cross_run.png`` (one heatmap of linear CKA per layer)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(result.values)
    per_layer = {n: result.per_layer(n) for n in names}
    labels = result.labels
    write_csv(out / "cross_run.csv", ["layer", "a", "b", *names],
              ([layer, labels[i], labels[j], *[per_layer[n][li, i, j] for n in names]]
               for li, layer in enumerate(result.layers)
               for i in range(len(labels)) for j in range(i + 1, len(labels))))
    (out / "cross_run.json").write_text(json.dumps(
        {"labels": labels, "layers": result.layers, "steps": result.steps,
         "num_examples": result.num_examples,
         **{n: nan_to_none(m) for n, m in per_layer.items()}},
        indent=1) + "\n")
    png = plot_per_layer(per_layer["linear_cka"], labels, result.layers,
                         out / "cross_run.png", title=title)
    return {"csv": str(out / "cross_run.csv"), "json": str(out / "cross_run.json"),
            "png": str(png)}
