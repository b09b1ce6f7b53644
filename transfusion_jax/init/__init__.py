"""Initialisation strategies, chosen by name through the explicit dict `INITIALIZERS`.

Every strategy is a function ``(rng, template, *, source=None, **options) -> variables``
where ``template`` and the result are ``{"params": ..., "batch_stats": ...}`` trees of the
model and ``source`` is a pretrained variables tree for the strategies that need one.
Strategies that work block by block also take ``blocks``, the model's block names in forward
order; `initialize` passes them. Strategies compose in sequence (`initialize_sequence`):
each one's output is the next one's template, e.g. ``pretrained`` then ``gabor``.

| name | what |
|---|---|
| random | He / LeCun / Glorot / truncated-normal kernels by layer type |
| pretrained | every tensor from ``source`` except ``dont_load`` regexes |
| mean_var | each tensor i.i.d. from N(mean, var) of the pretrained tensor (per tensor/channel) |
| transfusion | the first ``k`` blocks pretrained, the rest random |
| slim | pretrained up to block ``through``, random (thinner) top |
| reinit | pretrained with the top ``n`` blocks re-initialised |
| gabor | synthetic Gabor filters in the first conv, the rest random |
| shuffled | pretrained values permuted within each tensor (a control) |
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax

from transfusion_jax.config import ConfigError
from transfusion_jax.init.gabor import gabor_init
from transfusion_jax.init.mean_var import mean_var_init
from transfusion_jax.init.random import random_init
from transfusion_jax.init.transfer import (
    pretrained_init,
    reinit_init,
    shuffled_init,
    slim_init,
    transfusion_init,
)

INITIALIZERS: dict[str, Callable[..., dict[str, Any]]] = {
    "random": random_init,
    "pretrained": pretrained_init,
    "mean_var": mean_var_init,
    "transfusion": transfusion_init,
    "slim": slim_init,
    "reinit": reinit_init,
    "gabor": gabor_init,
    "shuffled": shuffled_init,
}

NEEDS_SOURCE = frozenset({"pretrained", "mean_var", "transfusion", "slim", "reinit",
                          "shuffled"})


def initialize(name: str, rng: jax.Array, template: dict[str, Any], *,
               source: dict[str, Any] | None = None, blocks: Sequence[str] = (),
               **options: Any) -> dict[str, Any]:
    """Runs ``INITIALIZERS[name]``; unknown names and options raise `ConfigError`."""
    if name not in INITIALIZERS:
        raise ConfigError(f"unknown initializer {name!r}; valid initializers: "
                          f"{', '.join(sorted(INITIALIZERS))}")
    fn = INITIALIZERS[name]
    if "blocks" in inspect.signature(fn).parameters:
        options["blocks"] = tuple(blocks)
    try:
        return fn(rng, template, source=source, **options)
    except TypeError as e:
        raise ConfigError(f"bad options for initializer {name!r} (init.options): {e}") from e


def initialize_sequence(steps: Sequence[tuple[str, dict[str, Any]]], rng: jax.Array,
                        template: dict[str, Any], *, source: dict[str, Any] | None = None,
                        blocks: Sequence[str] = ()) -> dict[str, Any]:
    """Applies ``[(name, options), ...]`` in order, each on the previous result."""
    variables = template
    for i, (name, options) in enumerate(steps):
        variables = initialize(name, jax.random.fold_in(rng, i), variables, source=source,
                               blocks=blocks, **dict(options))
    return variables


def parse_init_config(name: str, options: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``init.name`` = ``"a"`` with flat options, or ``"a+b"`` with ``options = {a: {...},
    b: {...}}``, as a list of steps for `initialize_sequence`."""
    names = [n.strip() for n in name.split("+")]
    if len(names) == 1:
        return [(names[0], dict(options))]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(f"init.name={name!r} composes {names}: init.options must be keyed by "
                          f"those names, not {unknown}")
    return [(n, dict(options.get(n, {}))) for n in names]
