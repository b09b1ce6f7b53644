"""Jitted, data-parallel train and eval steps.

Both are compiled once with `jax.jit` over the data mesh (`transfusion_jax.parallel`):
the state is replicated and donated, batches are sharded on their leading axis, and the
batch means inside (loss, BatchNorm statistics) are global means over every device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh

from transfusion_jax import parallel
from transfusion_jax.train.freeze import frozen_batchnorm
from transfusion_jax.train.losses import LOSSES
from transfusion_jax.train.metrics import LossAccuracy, per_example_accuracy
from transfusion_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, loss_name: str,
                    multi_label: bool, mesh: Mesh,
                    frozen_bn: frozenset[str] = frozenset()) -> Callable:
    """Returns ``step(state, metrics, batch) -> (state, metrics, loss)``, jitted and donated.

    ``metrics`` is a `LossAccuracy` collection accumulated since the last reset; ``loss`` is
    the scalar loss of this batch (used to catch NaN/inf at the step it appears).
    BatchNorm modules at the paths ``frozen_bn`` run in inference mode
    (`transfusion_jax.train.freeze`): running averages used, never updated.
    """
    loss_fn = LOSSES[loss_name]

    def step(state: TrainState, metrics: LossAccuracy, batch: Batch):
        rng = jax.random.fold_in(state.rng, state.step)

        def objective(params):
            with frozen_batchnorm(frozen_bn):
                (logits, _), updates = model.apply(
                    {"params": params, "batch_stats": state.batch_stats}, batch["image"],
                    train=True, mutable=["batch_stats"], rngs={"dropout": rng})
            per_example = loss_fn(logits, batch["label"])
            return per_example.mean(), (logits, per_example, updates)

        grads, (logits, per_example, updates) = jax.grad(objective, has_aux=True)(state.params)
        deltas, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1, params=optax.apply_updates(state.params, deltas),
            batch_stats=updates.get("batch_stats", state.batch_stats), opt_state=opt_state)
        batch_metrics = LossAccuracy.single_from_model_output(
            loss=per_example,
            accuracy=per_example_accuracy(logits, batch["label"], multi_label))
        return new_state, metrics.merge(batch_metrics), per_example.mean()

    replicated = parallel.replicated(mesh)
    return jax.jit(step, in_shardings=(replicated, replicated, parallel.batch_sharding(mesh)),
                   out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1))


def make_eval_step(model: nn.Module, loss_name: str, multi_label: bool, mesh: Mesh) -> Callable:
    """Returns ``step(variables, batch) -> (LossAccuracy, logits)``, jitted.

    ``batch["mask"]`` (1 = real example) keeps padding out of the metrics; the logits
    ``(b, k)`` stay sharded for the caller to gather for ranking metrics.
    """
    loss_fn = LOSSES[loss_name]

    def step(variables: dict[str, Any], batch: Batch):
        logits, _ = model.apply(variables, batch["image"], train=False)
        metrics = LossAccuracy.single_from_model_output(
            loss=loss_fn(logits, batch["label"]),
            accuracy=per_example_accuracy(logits, batch["label"], multi_label),
            mask=batch["mask"])
        return metrics, logits

    return jax.jit(step, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                   out_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)))


def empty_metrics(mesh: Mesh) -> LossAccuracy:
    """A zeroed, replicated metrics accumulator."""
    return parallel.replicate(mesh, LossAccuracy.empty())
