"""The ``weight_change`` evaluator: how far each block's weights have moved from step 0.

Per block (the model's top-level parameter groups), over its kernels (conv and dense
weights; biases and BatchNorm parameters are left out, as in Gonthier et al. 2020, Sec. 4.1):

- ``relative/<block>``: ``||W - W0||_F / ||W0||_F`` over all the block's kernels together;
- ``filter_corr_mean/<block>``, ``filter_corr_min/<block>``: the mean and the minimum over
  the block's filters (output channels: the last axis of a kernel) of the Pearson
  correlation between a filter's values at step 0 and now.

The same definitions, and the same values for degenerate cases, as the after-the-fact
analysis (`transfusion_jax.analysis.weight_change`): a filter constant at either end has
correlation 1 when unchanged, else 0; a relative change with a zero ``||W0||`` is 0 when
nothing moved, else infinite. The step-0 kernels are copied to the device once; each
evaluation is one compiled call over every block.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from transfusion_jax import parallel
from transfusion_jax.train.evaluators.base import EvalContext

OPTIONS = {"every_steps": 25}


def _kernels_by_block(params: dict[str, Any], blocks: Sequence[str]) -> dict[str, list]:
    """``{block: [kernel leaves]}`` in the order of ``blocks`` (other groups after)."""
    groups = list(dict.fromkeys([*(b for b in blocks if b in params), *params]))
    out = {}
    for group in groups:
        leaves = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params[group])
                  if getattr(path[-1], "key", None) == "kernel"]
        if leaves:
            out[group] = leaves
    return out


def filter_correlations(before: jax.Array, after: jax.Array) -> jax.Array:
    """Pearson correlation per filter (last axis) of two kernels: ``(..., F) -> (F,)``.

    A filter constant at either end (zero variance) gets 1 when unchanged, else 0.
    """
    a = before.reshape(-1, before.shape[-1]).astype(jnp.float32)
    b = after.reshape(-1, after.shape[-1]).astype(jnp.float32)
    a_c, b_c = a - a.mean(0), b - b.mean(0)
    # Normalise each column first: no overflow or underflow of the products at any scale.
    a_n = a_c / jnp.where(jnp.abs(a_c).max(0) > 0, jnp.abs(a_c).max(0), 1.0)
    b_n = b_c / jnp.where(jnp.abs(b_c).max(0) > 0, jnp.abs(b_c).max(0), 1.0)
    num = (a_n * b_n).sum(0)
    den = jnp.sqrt((a_n * a_n).sum(0) * (b_n * b_n).sum(0))
    constant = (a.max(0) == a.min(0)) | (b.max(0) == b.min(0))
    same = jnp.all(a == b, axis=0)
    return jnp.where(constant, jnp.where(same, 1.0, 0.0), num / jnp.where(den > 0, den, 1.0))


def _relative_change(before: list[jax.Array], after: list[jax.Array]) -> jax.Array:
    max_abs = jnp.max(jnp.stack([jnp.abs(w).max() for w in before]))
    scale = jnp.where(max_abs > 0, max_abs, 1.0)  # products of O(1) values: no overflow
    change = sum(jnp.sum(jnp.square((a - b) / scale)) for a, b in zip(after, before,
                                                                       strict=True))
    norm = sum(jnp.sum(jnp.square(b / scale)) for b in before)
    return jnp.where(norm > 0, jnp.sqrt(change / jnp.where(norm > 0, norm, 1.0)),
                     jnp.where(change > 0, jnp.inf, 0.0))


@functools.cache
def _step(blocks: tuple[str, ...]) -> Callable:
    """Jitted ``f(params, initial_params) -> {key: scalar}``, one evaluation of every block."""
    def evaluate(params, initial):
        now, then = _kernels_by_block(params, blocks), _kernels_by_block(initial, blocks)
        result = {}
        for block, kernels in now.items():
            result[f"relative/{block}"] = _relative_change(then[block], kernels)
            corr = jnp.concatenate([filter_correlations(b, a) for b, a in
                                    zip(then[block], kernels, strict=True)])
            result[f"filter_corr_mean/{block}"] = corr.mean()
            result[f"filter_corr_min/{block}"] = corr.min()
        return result

    return jax.jit(evaluate)


METRICS = ("relative", "filter_corr_mean", "filter_corr_min")


@dataclasses.dataclass
class WeightChange:
    name: str
    every_steps: int
    evaluate: Callable
    initial_params: Any
    keys: list[str]  # metric-major, blocks in forward order

    def run(self, state: Any, step: int) -> dict[str, float]:
        values = jax.device_get(self.evaluate(state.params, self.initial_params))
        return {k: float(values[k]) for k in self.keys}


def build(name: str, options: dict[str, Any], context: EvalContext) -> WeightChange:
    params = context.initial_variables["params"]
    blocks = list(_kernels_by_block(params, context.blocks))
    return WeightChange(name, int(options["every_steps"]), _step(tuple(context.blocks)),
                        parallel.replicate(context.mesh, params),
                        [f"{m}/{b}" for m in METRICS for b in blocks])
