"""Evaluation over a whole split: masked loss/accuracy plus ROC-AUC and mAP."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from jax.sharding import Mesh

from transfusion_jax import parallel
from transfusion_jax.train.metrics import gather, ranking_metrics


def evaluate(eval_step: Callable, variables: Any, batches: Iterable[dict[str, np.ndarray]],
             mesh: Mesh, multi_label: bool) -> dict[str, float]:
    """Runs ``eval_step`` over every batch and reduces the results.

    Args:
      eval_step: from `make_eval_step`.
      variables: replicated model variables.
      batches: this process's padded eval batches with ``mask`` (`data.eval_batches`).
      mesh: the data mesh.
      multi_label: whether labels are multi-hot.

    Returns:
      ``{"loss", "accuracy", "auc", "map", "num_examples"}`` over the real examples.
    """
    total = None
    logits, labels, masks = [], [], []
    for batch in batches:
        global_batch = parallel.make_global_batch(mesh, batch)
        metrics, batch_logits = eval_step(variables, global_batch)
        total = metrics if total is None else total.merge(metrics)
        logits.append(gather(batch_logits))
        labels.append(gather(global_batch["label"]))
        masks.append(gather(global_batch["mask"]))
    if total is None:
        raise ValueError("the eval split is empty")
    keep = np.concatenate(masks) > 0
    result = {k: float(v) for k, v in total.compute().items()}
    result.update(ranking_metrics(np.concatenate(logits)[keep], np.concatenate(labels)[keep],
                                  multi_label))
    result["num_examples"] = int(keep.sum())
    return result
