"""The similarity job (``job = "similarity"``): every checkpoint x layer of one run.

Reads a training run's checkpoints (`transfusion_jax.runs`), compares them through the
checkpoint-similarity pipeline (`checkpoint_similarity`) and writes, into the workdir:

- ``similarity.npz``: ``steps``, ``layers`` and ``(C, L, C, L)`` arrays ``linear_cka`` (all
  pairs, or those of the figures with ``pairs="plots"``) and ``svcca`` (the figures' pairs:
  every layer pair at the last checkpoint, every checkpoint pair per layer); NaN where a pair
  was not computed; for the figures' pairs also ``<measure>_low`` / ``_high`` (bootstrap
  interval over examples, ``similarity.bootstrap`` replicates) and ``_null_low`` /
  ``_null_high`` (the null band: examples permuted, ``similarity.null`` replicates);
- ``similarity_pairs.csv``: one row per computed pair (a cell left empty where that measure
  was not computed for the pair), with the interval and null-band columns and a ``warning``
  for an SVCCA value on fewer than 10 examples per feature; ``to_init.csv``: per step and
  layer, similarity to the first checkpoint (the initialisation when step 0 is kept), with
  its interval and null band;
- ``to_init.png``, ``layers_final.png``, ``checkpoints.png``: the heatmaps and curves.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import ml_collections

from transfusion_jax import parallel
from transfusion_jax.analysis.checkpoint_similarity import (
    checkpoint_similarity,
    plot_pairs,
    resolve_layers,
    run_checkpoints,
)
from transfusion_jax.analysis.similarity_files import write_job_files
from transfusion_jax.analysis.similarity_uncertainty import UncertaintyOptions
from transfusion_jax.config import ConfigError, check_choice
from transfusion_jax.paths import to_path
from transfusion_jax.similarity import REDUCTIONS

log = logging.getLogger(__name__)


def run_similarity_job(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Runs the comparison described by ``config.similarity``; writes its files to ``workdir``.

    Returns:
      ``{"steps", "layers", "linear_cka": (C, L, C, L), "svcca": ..., "files": {...},
      "num_examples"}``.
    """
    s = config.similarity
    if not s.run_dir:
        raise ConfigError("similarity.run_dir must name a training run's workdir")
    check_choice("similarity.reduction", s.reduction, REDUCTIONS)
    check_choice("similarity.pairs", s.pairs, ("all", "plots"))
    uncertainty = UncertaintyOptions.from_config(s)
    start = time.perf_counter()
    stacked = run_checkpoints(s.run_dir, tuple(s.steps))
    layers = resolve_layers(stacked, tuple(s.layers))
    num_c = len(stacked.steps)
    # SVCCA costs an eigendecomposition per pair: only the pairs the figures show.
    svcca_pairs = plot_pairs(num_c, len(layers)) if s.svcca else None
    result = checkpoint_similarity(
        stacked, layers=layers, pairs=s.pairs, svcca_pairs=svcca_pairs,
        split=s.split, reduction=s.reduction, batch_size=s.batch_size,
        max_examples=s.max_examples, debiased=s.debiased, svcca_keep=s.svcca_keep,
        uncertainty=uncertainty, interval_pairs=plot_pairs(num_c, len(layers)))
    log.info("similarity: %d checkpoints %s x %d layers %s, %d pairs over %d examples in "
             "%.1f s", num_c, result.steps, len(result.layers), result.layers,
             len(result.pairs), result.num_examples, time.perf_counter() - start)
    matrices = {name: result.matrix(name) for name in result.values}
    files = {}
    if parallel.is_writer():
        files = write_job_files(to_path(workdir), result, {
            "run_dir": str(stacked.run.workdir), "reduction": s.reduction,
            "num_examples": result.num_examples, "debiased": s.debiased,
            "bootstrap": uncertainty.bootstrap, "null": uncertainty.null,
            "confidence": uncertainty.confidence, "seconds": time.perf_counter() - start})
        log.info("similarity files in %s", workdir)
    return {"steps": result.steps, "layers": result.layers, **matrices, "files": files,
            "num_examples": result.num_examples}
