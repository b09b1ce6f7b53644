"""Initialisation strategies, chosen by name through the explicit dict `INITIALIZERS`.

Every strategy is a function ``(rng, template, *, source=None, **options) -> variables``
where ``template`` and the result are ``{"params": ..., "batch_stats": ...}`` trees of the
model, and ``source`` is a pretrained variables tree when the strategy needs one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from transfusion_jax.config import ConfigError
from transfusion_jax.init.random import random_init

INITIALIZERS: dict[str, Callable[..., dict[str, Any]]] = {
    "random": random_init,
}


def initialize(name: str, rng: jax.Array, template: dict[str, Any], *,
               source: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """Runs ``INITIALIZERS[name]``; unknown names and options raise `ConfigError`."""
    if name not in INITIALIZERS:
        raise ConfigError(f"unknown initializer {name!r}; valid initializers: "
                          f"{', '.join(sorted(INITIALIZERS))}")
    try:
        return INITIALIZERS[name](rng, template, source=source, **options)
    except TypeError as e:
        raise ConfigError(f"bad options for initializer {name!r} (init.options): {e}") from e
