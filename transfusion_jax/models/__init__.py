"""Model zoo. Every model is reached through the explicit dict `MODELS`.

Contract (every family follows it):
- a `flax.linen.Module` built by ``MODELS[name](num_classes, **options)``;
- ``__call__(x, *, train=False) -> (logits, out)`` with ``x`` of shape ``(n, h, w, c)``,
  ``logits`` float32 ``(n, num_classes)`` and ``out`` a dict of named intermediates
  (``stem``/``block1``/... , ``pre_logits``, ``logits``);
- every layer has an explicit ``name=``; the top-level parameter groups are the model's
  blocks in forward order, listed by ``module.block_names()``;
- BatchNorm uses ``use_running_average=not train`` and keeps statistics in ``batch_stats``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from transfusion_jax.config import ConfigError
from transfusion_jax.models.cbr import CBR_SPECS, make_cbr

MODELS: dict[str, Callable[..., nn.Module]] = {name: make_cbr(name) for name in CBR_SPECS}


def build_model(name: str, num_classes: int, **options: Any) -> nn.Module:
    """Builds ``MODELS[name]``; a bad name or option raises `ConfigError` naming the fix."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](num_classes, **options)
    except TypeError as e:
        raise ConfigError(f"bad options for model {name!r} (model.options): {e}") from e
