"""The train step of a group of runs: the single-run step, mapped over the run axis.

`make_group_train_step` compiles ``jax.vmap`` of `transfusion_jax.train.step.train_step_fn`
over stacked states, batches and learning-rate tables, with two masks per run: ``started``
(set by the host: a run resumed ahead of the others waits) and ``alive`` (kept on the
device: cleared at the first non-finite loss, after which the run's state never changes).
A masked run's state and metrics are returned unchanged, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from transfusion_jax import parallel
from transfusion_jax.config import ConfigError
from transfusion_jax.train.optim import make_optimizer, make_schedule
from transfusion_jax.train.step import eval_step_fn, train_step_fn


def schedule_table(train_config: ml_collections.ConfigDict) -> np.ndarray:
    """A run's learning rate at every optimizer count ``0..steps``: ``float32 (steps + 1,)``.

    The values of its own optax schedule (`make_schedule`), computed by the same compiled
    function the single-run step evaluates (equal to it bit for bit).
    """
    counts = jnp.arange(train_config.steps + 1, dtype=jnp.int32)
    return np.asarray(jax.jit(make_schedule(train_config))(counts), np.float32)


def make_group_train_step(model: nn.Module, train_config: ml_collections.ConfigDict,
                          loss_name: str, multi_label: bool, mesh: Mesh,
                          frozen_bn: frozenset[str] = frozenset()) -> Callable:
    """Returns the jitted ``step(state, metrics, batch, tables, started, alive)``.

    Args:
      model: the runs' common model.
      train_config: one run's ``config.train``; its schedule is not used (each run's comes
        from ``tables``), everything else (optimizer, weight decay, clipping, per-parameter
        factors) is common to the group.
      loss_name, multi_label: as for `train_step_fn`.
      mesh: a `parallel.grid_mesh`.
      frozen_bn: BatchNorm modules run in inference mode (`transfusion_jax.train.freeze`;
        common to the group, whose runs share ``train.freeze`` and ``lr_multipliers``).

    Returns:
      ``step(state, metrics, batch, tables, started, alive) -> (state, metrics, loss,
      alive)`` with ``state`` a stacked `TrainState` (donated), ``metrics`` a stacked
      `LossAccuracy` (donated), ``batch`` ``{"image": (R, B, ...), "label": (R, B, ...)}``,
      ``tables`` ``(R, steps + 1)`` learning rates, ``started`` and ``alive`` ``(R,)`` bool;
      ``loss`` ``(R,)`` is each run's batch loss.
    """
    def one_run(state, metrics, batch, table, started, alive):
        def learning_rate(count):
            return table[jnp.minimum(count, table.shape[0] - 1)]

        step = train_step_fn(model, make_optimizer(train_config, learning_rate), loss_name,
                             multi_label, frozen_bn)
        new_state, new_metrics, loss = step(state, metrics, batch)
        finite = jnp.isfinite(loss)
        keep = started & alive & finite
        new_state, new_metrics = jax.tree.map(lambda new, old: jnp.where(keep, new, old),
                                              (new_state, new_metrics), (state, metrics))
        return new_state, new_metrics, loss, alive & (finite | ~started)

    runs = parallel.run_sharding(mesh)
    return jax.jit(jax.vmap(one_run),
                   in_shardings=(runs, runs, parallel.run_batch_sharding(mesh), runs, runs,
                                 runs),
                   out_shardings=(runs, runs, runs, runs), donate_argnums=(0, 1))


def make_group_eval_step(model: nn.Module, loss_name: str, multi_label: bool,
                         mesh: Mesh) -> Callable:
    """`eval_step_fn` mapped over stacked variables, one shared batch:
    ``step(variables (R, ...), batch) -> (LossAccuracy (R,), logits (R, b, k))``."""
    step = jax.vmap(eval_step_fn(model, loss_name, multi_label), in_axes=(0, None))
    return jax.jit(step, in_shardings=(parallel.run_sharding(mesh),
                                       parallel.batch_sharding(mesh)),
                   out_shardings=(parallel.run_sharding(mesh),
                                  parallel.run_batch_sharding(mesh)))


def take_run(mesh: Mesh) -> Callable:
    """Jitted ``take(stacked_tree, r) -> tree of run r``, replicated over ``mesh`` (what a
    run trained alone holds, and checkpoints)."""
    return jax.jit(lambda tree, r: jax.tree.map(lambda x: x[r], tree),
                   out_shardings=parallel.replicated(mesh))


def stacked_shapes(tree: Any, num_runs: int) -> Any:
    """`jax.ShapeDtypeStruct`s of ``tree`` (arrays or shape structs) with a leading run axis."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((num_runs, *x.shape), x.dtype), tree)


class UnvmappableModelError(ConfigError):
    """A model whose train step cannot be mapped over runs (`check_vmappable`)."""


def check_vmappable(step: Callable, state: Any, metrics: Any, batch: dict[str, Any],
                    num_runs: int, steps: int, model_name: str) -> None:
    """Traces ``step`` on shapes alone; raises `UnvmappableModelError` (a `ConfigError`) if
    the model cannot be mapped over runs (e.g. an ordered host callback inside it), naming
    the fallback.

    Args:
      step: from `make_group_train_step`.
      state, metrics: one run's abstract `TrainState` and `LossAccuracy` (shapes suffice).
      batch: one run's global batch (shapes suffice).
      num_runs: the group's size.
      steps: ``train.steps`` (the learning-rate tables hold ``steps + 1`` values).
      model_name: ``config.model.name``, for the message.
    """
    flags = jax.ShapeDtypeStruct((num_runs,), jnp.bool_)
    try:
        jax.eval_shape(step, stacked_shapes(state, num_runs), stacked_shapes(metrics, num_runs),
                       stacked_shapes(batch, num_runs),
                       jax.ShapeDtypeStruct((num_runs, steps + 1), jnp.float32), flags, flags)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "not vmappable"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnvmappableModelError(
            f"sweep.vectorize=True but model {model_name!r} cannot be trained vectorised "
            f"(jax.vmap of its train step fails: {type(e).__name__}: {reason}); set "
            "sweep.vectorize=False to train the runs one after another") from e


def stack_trees(trees: Sequence[Any]) -> Any:
    """Host arrays of the same pytrees stacked on a new leading axis."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
