"""The similarity sweep job: every checkpoint x layer of a run against each other.

Reads a training run's checkpoints, computes representations of the eval split through all
of them at once (`activations`), streams them into exact full-data accumulators
(`transfusion_jax.similarity.streaming`) and writes, into the workdir:

- ``similarity.npz``: ``steps``, ``layers`` and ``(C, L, C, L)`` arrays ``linear_cka`` (all
  pairs, or those of the figures with ``pairs="plots"``) and ``svcca`` (the figures' pairs:
  every layer pair at the last checkpoint, every checkpoint pair per layer); NaN where a pair
  was not computed;
- ``similarity_pairs.csv``: one row per computed pair; ``to_init.csv``: per step and layer,
  similarity to the first checkpoint (the initialisation when step 0 is kept);
- ``to_init.png``, ``layers_final.png``, ``checkpoints.png``: the heatmaps and curves.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from transfusion_jax import parallel
from transfusion_jax.analysis.activations import layer_names
from transfusion_jax.analysis.similarity_plots import plot_similarity
from transfusion_jax.analysis.stacked_similarity import streamed_similarity
from transfusion_jax.analysis.trajectory import load_trajectory
from transfusion_jax.config import ConfigError, check_choice
from transfusion_jax.similarity import REDUCTIONS, all_pairs

log = logging.getLogger(__name__)


def plot_pairs(num_checkpoints: int, num_layers: int) -> np.ndarray:
    """The pairs the plots need: every layer pair at the last checkpoint, and every
    checkpoint pair of each layer (which include each checkpoint vs the first)."""
    c_last = num_checkpoints - 1
    pairs = {(c_last * num_layers + a, c_last * num_layers + b)
             for a in range(num_layers) for b in range(a, num_layers)}
    pairs |= {(c1 * num_layers + layer, c2 * num_layers + layer)
              for layer in range(num_layers) for c1 in range(num_checkpoints)
              for c2 in range(c1, num_checkpoints)}
    return np.array(sorted(pairs))


def _matrix(values: np.ndarray, pairs: np.ndarray, num_checkpoints: int,
            num_layers: int) -> np.ndarray:
    """``(C, L, C, L)`` symmetric array from per-pair values, NaN where not computed."""
    p = num_checkpoints * num_layers
    m = np.full((p, p), np.nan)
    m[pairs[:, 0], pairs[:, 1]] = values
    m[pairs[:, 1], pairs[:, 0]] = values
    return m.reshape(num_checkpoints, num_layers, num_checkpoints, num_layers)


def run_similarity_sweep(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Runs the sweep described by ``config.similarity`` and writes its files to ``workdir``.

    Returns:
      ``{"steps", "layers", "linear_cka": (C, L, C, L), "svcca": ..., "files": {...}}``.
    """
    s = config.similarity
    if not s.run_dir:
        raise ConfigError("similarity.run_dir must name a training run's workdir")
    check_choice("similarity.reduction", s.reduction, REDUCTIONS)
    check_choice("similarity.pairs", s.pairs, ("all", "plots"))
    start = time.perf_counter()
    traj = load_trajectory(s.run_dir, tuple(s.steps))
    model, data = traj.setup.model, traj.config.data
    layers = list(s.layers) or layer_names(model, traj.setup.input_shape)
    unknown = sorted(set(layers) - set(layer_names(model, traj.setup.input_shape)))
    if unknown:
        raise ConfigError(f"similarity.layers {unknown} are not outputs of the model; valid: "
                          f"{layer_names(model, traj.setup.input_shape)}")
    num_c, num_l = len(traj.steps), len(layers)
    log.info("similarity sweep: %d checkpoints %s x %d layers %s", num_c, traj.steps, num_l,
             layers)
    pairs = all_pairs(num_c * num_l) if s.pairs == "all" else plot_pairs(num_c, num_l)
    svcca_pairs = []
    if s.svcca:  # an eigendecomposition per pair: only the pairs the figures show
        wanted = {tuple(p) for p in plot_pairs(num_c, num_l)}
        svcca_pairs = [q for q, p in enumerate(pairs) if tuple(p) in wanted]
    streamed = streamed_similarity(
        model, traj.variables, layers, data, s.split or data.eval_split, pairs=pairs,
        reduction=s.reduction, batch_size=s.batch_size, max_examples=s.max_examples,
        debiased=s.debiased, svcca_pairs=svcca_pairs, svcca_keep=s.svcca_keep)
    results, num_examples = streamed.values, streamed.num_examples
    matrices = {k: _matrix(v, pairs, num_c, num_l) for k, v in results.items()}
    elapsed = time.perf_counter() - start
    files = {}
    if parallel.is_writer():
        files = _write(Path(workdir), traj.steps, layers, pairs, results, matrices,
                       {"run_dir": str(Path(s.run_dir).absolute()), "reduction": s.reduction,
                        "num_examples": num_examples, "debiased": s.debiased,
                        "seconds": elapsed})
    log.info("similarity of %d pairs over %d examples in %.1f s; files in %s", len(pairs),
             num_examples, elapsed, workdir)
    return {"steps": traj.steps, "layers": layers, **matrices, "files": files,
            "num_examples": num_examples}


def _write(workdir: Path, steps: list[int], layers: list[str], pairs: np.ndarray,
           results: dict[str, np.ndarray], matrices: dict[str, np.ndarray],
           info: dict[str, Any]) -> dict[str, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    num_l = len(layers)
    np.savez(workdir / "similarity.npz", steps=np.array(steps), layers=np.array(layers),
             pairs=pairs, **matrices)
    names = list(results)
    with open(workdir / "similarity_pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step_a", "layer_a", "step_b", "layer_b", *names])
        for k, (i, j) in enumerate(pairs):
            w.writerow([steps[i // num_l], layers[i % num_l], steps[j // num_l],
                        layers[j % num_l], *[f"{results[n][k]:.6f}" for n in names]])
    with open(workdir / "to_init.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "layer", *[f"{n}_to_first" for n in names]])
        for c, step in enumerate(steps):
            for layer_index, layer in enumerate(layers):
                w.writerow([step, layer, *[f"{matrices[n][0, layer_index, c, layer_index]:.6f}"
                                           for n in names]])
    pngs = plot_similarity(workdir, steps, layers, matrices)
    (workdir / "similarity.json").write_text(json.dumps(
        {**info, "steps": steps, "layers": layers, "num_pairs": len(pairs)}, indent=2) + "\n")
    return {"npz": str(workdir / "similarity.npz"), "pairs_csv": str(workdir /
            "similarity_pairs.csv"), "to_init_csv": str(workdir / "to_init.csv"), **pngs}
