"""The ``classification`` evaluator: loss, accuracy, ROC-AUC and mAP over a whole split.

Options: ``split`` (default: the run's ``data.eval_split``), ``batch_size``. The run's main
evaluation, ``eval`` (configured by ``config.eval``, its metrics drive the convergence
record), is one of these; more can be added under ``config.evals`` (e.g. on the train split).
For a group of runs trained together (`build_group`), each eval batch is read once and
evaluated for every run by one compiled call.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from transfusion_jax import parallel
from transfusion_jax.data import eval_batches, open_source
from transfusion_jax.train.evaluators.base import EvalContext
from transfusion_jax.train.group.step import make_group_eval_step
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
    total, logits, labels, masks = _accumulate(eval_step, variables, batches, mesh)
    return _result(jax.device_get(total.compute()), np.concatenate(logits),
                   np.concatenate(labels), np.concatenate(masks), multi_label)


def _accumulate(eval_step: Callable, variables: Any, batches: Iterable[dict[str, np.ndarray]],
                mesh: Mesh) -> tuple[Any, list, list, list]:
    """Each batch once through ``eval_step``: the merged metrics and, per batch, the gathered
    logits, labels and masks (host arrays, concatenated by the caller).

    Raises:
      ValueError: no batches (an empty eval split).
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
    return total, logits, labels, masks


def _result(means: dict[str, Any], logits: np.ndarray, labels: np.ndarray, masks: np.ndarray,
            multi_label: bool) -> dict[str, float]:
    """One run's result: the accumulated means, ranking metrics over the real examples."""
    keep = masks > 0
    result = {k: float(v) for k, v in means.items()}
    result.update(ranking_metrics(logits[keep], labels[keep], multi_label))
    result["num_examples"] = int(keep.sum())
    return result


def evaluate_runs(eval_step: Callable, variables: Any,
                  batches: Iterable[dict[str, np.ndarray]], mesh: Mesh,
                  multi_label: bool) -> list[dict[str, float]]:
    """`evaluate` for stacked runs: each batch once through ``eval_step`` (from
    `transfusion_jax.train.group.step.make_group_eval_step`) for every run.

    Args:
      variables: model variables stacked on a leading run axis ``(R, ...)``.

    Returns:
      One result per run, each what `evaluate` gives for that run alone (the same
      accumulation order); a run whose logits are not finite (it failed, and the group
      loop records nothing more of it) gets the means alone.
    """
    total, logits, labels, masks = _accumulate(eval_step, variables, batches, mesh)
    means = jax.device_get(jax.vmap(type(total).compute)(total))  # {metric: (R,)}
    logits_all, labels_all, masks_all = (np.concatenate(logits, axis=1),
                                         np.concatenate(labels), np.concatenate(masks))
    results = []
    for r in range(logits_all.shape[0]):
        if np.isfinite(logits_all[r]).all():
            results.append(_result({k: v[r] for k, v in means.items()}, logits_all[r],
                                   labels_all, masks_all, multi_label))
        else:  # a run failed (non-finite loss), its updates masked: nothing to rank
            results.append({k: float(v[r]) for k, v in means.items()})
    return results


@functools.cache
def _eval_step(model: Any, loss_name: str, multi_label: bool, mesh: Mesh) -> Callable:
    """The jitted eval step, compiled once per (model, loss, label kind, mesh)."""
    return make_eval_step(model, loss_name, multi_label, mesh)


@functools.cache
def _group_eval_step(model: Any, loss_name: str, multi_label: bool, mesh: Mesh) -> Callable:
    """The jitted eval step over stacked runs, compiled once per (model, loss, kind, mesh)."""
    return make_group_eval_step(model, loss_name, multi_label, mesh)


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


@dataclasses.dataclass
class GroupClassification:
    """Every run of a group over the split: each batch read once and evaluated for all runs
    by one compiled call."""

    name: str
    every_steps: int
    settings: ClassificationEvaluator  # the split, batch size, context and source

    def run(self, state: Any, step: int) -> list[dict[str, float]]:
        e, c = self.settings, self.settings.context
        batches = eval_batches(e.source, c.data, e.batch_size, c.data.num_threads)
        step_fn = _group_eval_step(c.model, c.loss_name, c.meta.multi_label, c.mesh)
        return evaluate_runs(step_fn, state.variables, batches, c.mesh, c.meta.multi_label)


def build_group(name: str, options: dict[str, Any],
                context: EvalContext) -> GroupClassification:
    settings = build(name, options, context)
    return GroupClassification(name, settings.every_steps, settings)
