"""Files of a checkpoint-similarity result (`checkpoint_similarity.CheckpointSimilarity`).

- `write_job_files`: the similarity job's ``similarity.npz``, ``similarity_pairs.csv``,
  ``to_init.csv``, ``similarity.json`` and figures (`similarity_plots.plot_similarity`);
- `write_per_layer`: per-layer checkpoint x checkpoint tables (``cross_run.csv``,
  ``cross_run.json``) and heatmaps (``cross_run.png``), as the analyze job writes them.

Tables go through `transfusion_jax.outputs`: a measure not computed for a pair is an empty
cell, never a literal ``nan``. Each measure ``m`` comes with ``m_low``, ``m_high`` (bootstrap
interval over examples) and ``m_null_low``, ``m_null_high`` (null band), empty for pairs
without replicates; a ``warning`` column names CCA-family values on too few examples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from transfusion_jax.analysis.checkpoint_similarity import CheckpointSimilarity
from transfusion_jax.analysis.similarity_plots import plot_per_layer, plot_similarity
from transfusion_jax.analysis.similarity_uncertainty import COLUMNS
from transfusion_jax.outputs import nan_to_none, write_csv
from transfusion_jax.paths import to_path


def columns(names: list[str], middle: str = "") -> list[str]:
    """Per measure: its value column and its interval and null-band columns."""
    return [f"{n}{middle}{suffix}" for n in names
            for suffix in ("", *(f"_{x}" for x in COLUMNS.values()))]


def write_job_files(workdir: Path, result: CheckpointSimilarity,
                    info: dict[str, Any]) -> dict[str, str]:
    """Writes the similarity job's files into ``workdir``; returns ``{name: path}``."""
    workdir.mkdir(parents=True, exist_ok=True)
    steps, layers, num_l = result.steps, result.layers, len(result.layers)
    names = list(result.values)
    matrices = {n: result.matrix(n) for n in names}
    bands = {f"{n}_{suffix}": result.matrix(n, f) for n in names for f, suffix in COLUMNS.items()}
    np.savez(workdir / "similarity.npz", steps=np.array(steps), layers=np.array(layers),
             pairs=result.pairs, **matrices, **bands)
    warn = [" ".join(w for w in (result.warnings.get(n, [None] * len(result.pairs))[q]
                                 for n in names) if w)
            for q in range(len(result.pairs))]
    write_csv(workdir / "similarity_pairs.csv",
              ["step_a", "layer_a", "step_b", "layer_b", *columns(names), "warning"],
              ([steps[i // num_l], layers[i % num_l], steps[j // num_l], layers[j % num_l],
                *[result.field(n, f)[q] for n in names for f in ("value", *COLUMNS)],
                warn[q]]
               for q, (i, j) in enumerate(result.pairs.tolist())))
    warnings = {n: result.warning_matrix(n) for n in result.warnings}
    write_csv(workdir / "to_init.csv",
              ["step", "layer", *columns(names, "_to_first"), "warning"],
              ([step, layer, *[m[0, li, c, li] for n in names
                               for m in (matrices[n], *(bands[f"{n}_{x}"]
                                                        for x in COLUMNS.values()))],
                " ".join(w[0, li, c, li] for w in warnings.values() if w[0, li, c, li])]
               for c, step in enumerate(steps) for li, layer in enumerate(layers)))
    pngs = plot_similarity(workdir, steps, layers, matrices, bands)
    (workdir / "similarity.json").write_text(json.dumps(
        {**info, "steps": steps, "layers": layers, "num_pairs": len(result.pairs),
         "warnings": sorted({w for w in warn if w})},
        indent=2) + "\n")
    return {"npz": str(workdir / "similarity.npz"),
            "pairs_csv": str(workdir / "similarity_pairs.csv"),
            "to_init_csv": str(workdir / "to_init.csv"), **pngs}


def write_per_layer(result: CheckpointSimilarity, out_dir: str | Path, *,
                    title: str = "") -> dict[str, str]:
    """``cross_run.csv`` (one row per checkpoint pair and layer), ``cross_run.json`` and
    ``cross_run.png`` (one heatmap of linear CKA per layer)."""
    out = to_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(result.values)
    per_layer = {f"{n}{suffix}": result.per_layer(n, f) for n in names
                 for f, suffix in (("value", ""), *((f, f"_{x}") for f, x in COLUMNS.items()))}
    warnings = [np.einsum("alcl->lac", result.warning_matrix(n)) for n in result.warnings]
    labels = result.labels
    write_csv(out / "cross_run.csv", ["layer", "a", "b", *columns(names), "warning"],
              ([layer, labels[i], labels[j], *[per_layer[c][li, i, j] for c in columns(names)],
                " ".join(w[li, i, j] for w in warnings if w[li, i, j])]
               for li, layer in enumerate(result.layers)
               for i in range(len(labels)) for j in range(i + 1, len(labels))))
    (out / "cross_run.json").write_text(json.dumps(
        {"labels": labels, "layers": result.layers, "steps": result.steps,
         "num_examples": result.num_examples,
         "warnings": sorted({w for ws in result.warnings.values() for w in ws if w}),
         **{n: nan_to_none(m) for n, m in per_layer.items()}},
        indent=1) + "\n")
    png = plot_per_layer(per_layer["linear_cka"], labels, result.layers,
                         out / "cross_run.png", title=title,
                         null_high=per_layer["linear_cka_null_high"])
    return {"csv": str(out / "cross_run.csv"), "json": str(out / "cross_run.json"),
            "png": str(png)}
