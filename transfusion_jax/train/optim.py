"""Optimizers and learning-rate schedules from config, chosen through explicit dicts.

``config.train.optimizer.name`` picks from `OPTIMIZERS`, ``config.train.schedule.name`` from
`SCHEDULES`. Weight decay (decoupled, added to the update before the learning rate) applies
to the parameters whose ``/``-joined path matches ``weight_decay_mask`` (default: kernels).

Per-parameter learning rates (the fine-tuning modes of Gonthier et al. 2020): the final
update of a parameter is multiplied by the factor of the first ``train.lr_multipliers``
regex its path matches (1 if none), and by 0 if it matches ``train.freeze``. Applied after
the optimizer, a factor scales that parameter's learning rate exactly, for SGD with momentum
and for Adam alike; a frozen parameter never moves (its weight decay is scaled away too).
A layer whose parameters are all frozen also keeps its BatchNorm statistics and runs its
BatchNorm as at evaluation (``train.freeze_batch_stats``, `transfusion_jax.train.freeze`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
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


def lr_factors(params: Any, multipliers: Any = (), freeze: str = "") -> Any:
    """Per-leaf learning-rate factors of ``params``: a tree of Python floats.

    Args:
      params: the parameter tree (only its structure and paths are used).
      multipliers: ``((regex, factor), ...)`` on ``a/b/kernel`` paths; first match wins.
      freeze: a regex; matching parameters get factor 0.

    Raises:
      ConfigError: a malformed entry, a bad regex, or a rule that matches no parameter
        (almost always a typo in the pattern).
    """
    rules = []
    for entry in multipliers:
        if not (isinstance(entry, tuple | list) and len(entry) == 2):
            raise ConfigError(f"train.lr_multipliers entries are (regex, factor) pairs, got "
                              f"{entry!r}")
        pattern, factor = entry
        if not isinstance(factor, int | float) or factor < 0:
            raise ConfigError(f"train.lr_multipliers factor for {pattern!r} must be a "
                              f"non-negative number, got {factor!r}")
        rules.append((_compile(pattern, "train.lr_multipliers"), float(factor)))
    frozen = _compile(freeze, "train.freeze") if freeze else None
    flat = traverse_util.flatten_dict(params, sep="/")
    used: set[int] = set()  # rule indices that matched a path; -1 is the freeze rule
    factors = {}
    for path in flat:
        hit = next((i for i, (regex, _) in enumerate(rules) if regex.search(path)), None)
        factors[path] = 1.0 if hit is None else rules[hit][1]
        used.add(hit)
        if frozen is not None and frozen.search(path):
            factors[path] = 0.0
            used.add(-1)
    unused = [rules[i][0].pattern for i in range(len(rules)) if i not in used]
    if frozen is not None and -1 not in used:
        unused.append(freeze)
    if unused:
        raise ConfigError(f"learning-rate rules {unused} match no parameter; paths look like "
                          f"{', '.join(list(flat)[:3])}, ...")
    return traverse_util.unflatten_dict(factors, sep="/")


def _compile(pattern: str, key: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{key}: bad regex {pattern!r}: {e}") from e


def scale_by_factors(multipliers: Any = (), freeze: str = "") -> optax.GradientTransformation:
    """Multiplies each parameter's update by its `lr_factors` factor (stateless)."""
    def init_fn(params):
        lr_factors(params, multipliers, freeze)  # validate the rules against the params now
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        factors = lr_factors(updates, multipliers, freeze)
        return jax.tree.map(lambda u, f: u if f == 1.0 else u * f, updates, factors), state

    return optax.GradientTransformation(init_fn, update_fn)


def make_schedule(train_config: Any) -> optax.Schedule:
    """The learning-rate schedule of ``config.train``."""
    return SCHEDULES[train_config.schedule.name](train_config.schedule, train_config.steps)


def make_optimizer(train_config: Any) -> optax.GradientTransformation:
    """The full update rule: [clip] -> [weight decay] -> optimizer with schedule ->
    [per-parameter learning-rate factors]."""
    parts = []
    if train_config.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(train_config.grad_clip_norm))
    if train_config.weight_decay:
        parts.append(optax.add_decayed_weights(train_config.weight_decay,
                                               mask=decay_mask(train_config.weight_decay_mask)))
    parts.append(OPTIMIZERS[train_config.optimizer.name](make_schedule(train_config),
                                                         train_config.optimizer))
    if train_config.lr_multipliers or train_config.freeze:
        parts.append(scale_by_factors(tuple(train_config.lr_multipliers),
                                      train_config.freeze))
    return optax.chain(*parts)
