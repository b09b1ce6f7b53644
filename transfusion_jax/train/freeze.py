"""Frozen layers' BatchNorm: kept in inference mode, so frozen features stay put.

``train.freeze`` (and any ``train.lr_multipliers`` factor 0) stops a layer's parameters
from moving. A BatchNorm layer also has *statistics*: in train mode it normalises with the
batch's mean and variance and moves its running averages towards them, so a "frozen"
backbone would still change what it computes (its evaluation features drift with the
running averages, and during training the head sees batch-normalised features that
evaluation never shows it).

With ``train.freeze_batch_stats = True`` (the default) every BatchNorm module whose
parameters are all frozen runs as at evaluation, in training too: it normalises with its
stored running averages and never updates them (what Keras does for a layer with
``trainable = False``, and what a PyTorch user gets by putting a frozen backbone in
``eval()`` mode). Every frozen layer then computes exactly what it computed at step 0,
bit for bit, in training and at evaluation. With ``train.freeze_batch_stats = False``
frozen layers' BatchNorm keeps PyTorch's default train-mode behaviour: batch statistics
in training, running averages tracking the new data.

The switch is made without touching the models: `frozen_batchnorm` intercepts the
``__call__`` of the chosen `flax.linen.BatchNorm` modules (by module path) while the train
step is traced, and runs them with ``use_running_average=True``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
from flax import traverse_util

from transfusion_jax.train.optim import lr_factors


def frozen_modules(params: Any, multipliers: Any = (), freeze: str = "") -> frozenset[str]:
    """``/``-joined paths of the modules whose every parameter has learning-rate factor 0.

    Args:
      params: the parameter tree (only its paths are used).
      multipliers: ``train.lr_multipliers``.
      freeze: ``train.freeze``.

    Returns:
      e.g. ``frozenset({"block1/bn", "block1", "stem/bn", ...})``: every module (and
      parent module) all of whose parameters are frozen.
    """
    if not (freeze or multipliers):
        return frozenset()
    factors = traverse_util.flatten_dict(lr_factors(params, multipliers, freeze), sep="/")
    moving: set[str] = set()
    modules: set[str] = set()
    for path, factor in factors.items():
        parts = path.split("/")[:-1]
        prefixes = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
        modules |= prefixes
        if factor != 0.0:
            moving |= prefixes
    return frozenset(modules - moving)


def frozen_bn_modules(train_config: Any, params: Any) -> frozenset[str]:
    """The modules whose BatchNorm runs in inference mode for ``config.train``: the frozen
    modules when ``train.freeze_batch_stats`` (default), none otherwise."""
    if not train_config.get("freeze_batch_stats", True):
        return frozenset()
    return frozen_modules(params, tuple(train_config.lr_multipliers), train_config.freeze)


@contextlib.contextmanager
def frozen_batchnorm(frozen: frozenset[str]) -> Iterator[None]:
    """Within the context, BatchNorm modules at paths in ``frozen`` run in inference mode.

    Use it around ``model.apply(..., train=True, mutable=["batch_stats"])``: those modules
    normalise with their running averages and leave them unchanged; every other module is
    untouched.
    """
    if not frozen:
        yield
        return

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (context.method_name == "__call__" and isinstance(module, nn.BatchNorm)
                and module.use_running_average is False
                and "/".join(module.path) in frozen):
            # Flax modules are frozen dataclasses; this bound instance lives for one call.
            object.__setattr__(module, "use_running_average", True)
            try:
                return next_fun(*args, **kwargs)
            finally:
                object.__setattr__(module, "use_running_average", False)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield
