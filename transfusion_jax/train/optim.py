"""Optimizers and learning-rate schedules from config, chosen through explicit dicts.

``config.train.optimizer.name`` picks from `OPTIMIZERS`, ``config.train.schedule.name`` from
`SCHEDULES`. Weight decay (decoupled, added to the update before the learning rate) applies
to the parameters whose ``/``-joined path matches ``weight_decay_mask`` (default: kernels).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import optax
from flax import traverse_util

from transfusion_jax.config import ConfigError


def _constant(c: Any, steps: int) -> optax.Schedule:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, c.base_lr, c.warmup_steps), optax.constant_schedule(c.base_lr)],
        [c.warmup_steps]) if c.warmup_steps else optax.constant_schedule(c.base_lr)


def _cosine(c: Any, steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if c.warmup_steps else c.base_lr, peak_value=c.base_lr,
        warmup_steps=c.warmup_steps, decay_steps=max(steps, c.warmup_steps + 1),
        end_value=c.base_lr * c.end_lr_factor)


def _step(c: Any, steps: int) -> optax.Schedule:
    if not c.boundaries:
        raise ConfigError("schedule 'step' needs train.schedule.boundaries, e.g. (3000, 6000)")
    decay = optax.piecewise_constant_schedule(
        c.base_lr, {int(b) - c.warmup_steps: c.decay_factor for b in c.boundaries})
    if not c.warmup_steps:
        return decay
    return optax.join_schedules(
        [optax.linear_schedule(0.0, c.base_lr, c.warmup_steps), decay], [c.warmup_steps])


SCHEDULES: dict[str, Callable[[Any, int], optax.Schedule]] = {
    "constant": _constant,
    "cosine": _cosine,
    "step": _step,
}

OPTIMIZERS: dict[str, Callable[[optax.Schedule, Any], optax.GradientTransformation]] = {
    "sgd": lambda lr, o: optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov),
    "adam": lambda lr, o: optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps),
}


def decay_mask(pattern: str) -> Callable[[Any], Any]:
    """A mask function: True for parameters whose path ``a/b/kernel`` matches ``pattern``."""
    regex = re.compile(pattern)

    def mask(params: Any) -> Any:
        flat = traverse_util.flatten_dict(params, sep="/")
        return traverse_util.unflatten_dict(
            {k: bool(regex.search(k)) for k in flat}, sep="/")

    return mask


def make_schedule(train_config: Any) -> optax.Schedule:
    """The learning-rate schedule of ``config.train``."""
    return SCHEDULES[train_config.schedule.name](train_config.schedule, train_config.steps)


def make_optimizer(train_config: Any) -> optax.GradientTransformation:
    """The full update rule: [clip] -> [weight decay] -> optimizer with schedule."""
    parts = []
    if train_config.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(train_config.grad_clip_norm))
    if train_config.weight_decay:
        parts.append(optax.add_decayed_weights(train_config.weight_decay,
                                               mask=decay_mask(train_config.weight_decay_mask)))
    parts.append(OPTIMIZERS[train_config.optimizer.name](make_schedule(train_config),
                                                         train_config.optimizer))
    return optax.chain(*parts)
