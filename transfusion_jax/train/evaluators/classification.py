"""The ``classification`` evaluator: loss, accuracy, ROC-AUC and mAP over a whole split.

Options: ``split`` (default: the run's ``data.eval_split``), ``batch_size``. The run's main
evaluation, ``eval`` (configured by ``config.eval``, its metrics drive the convergence
record), is one of these; more can be added under ``config.evals`` (e.g. on the train split).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from jax.sharding import Mesh

from transfusion_jax import parallel
from transfusion_jax.data import eval_batches, open_source
from transfusion_jax.train.evaluators.base import EvalContext
from transfusion_jax.train.metrics import gather, ranking_metrics
from transfusion_jax.train.step import make_eval_step

OPTIONS = {"every_steps": 100, "split": "", "batch_size": 256}


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


@functools.cache
def _eval_step(model: Any, loss_name: str, multi_label: bool, mesh: Mesh) -> Callable:
    """The jitted eval step, compiled once per (model, loss, label kind, mesh)."""
    return make_eval_step(model, loss_name, multi_label, mesh)


@dataclasses.dataclass
class ClassificationEvaluator:
    name: str
    every_steps: int
    split: str
    batch_size: int
    context: EvalContext
    source: Any

    def run(self, state: Any, step: int) -> dict[str, float]:
        c = self.context
        batches = eval_batches(self.source, c.data, self.batch_size, c.data.num_threads)
        step_fn = _eval_step(c.model, c.loss_name, c.meta.multi_label, c.mesh)
        return evaluate(step_fn, state.variables, batches, c.mesh, c.meta.multi_label)


def build(name: str, options: dict[str, Any], context: EvalContext) -> ClassificationEvaluator:
    split = options["split"] or context.data.eval_split
    source, _ = open_source(context.data, split)
    return ClassificationEvaluator(name, int(options["every_steps"]), split,
                                   int(options["batch_size"]), context, source)
