"""Mean-Var initialisation (Raghu et al. 2019): random weights with pretrained statistics.

Each weight tensor is drawn i.i.d. from N(mean, var) of the matching pretrained tensor; the
per-channel variant uses the mean and variance of each output channel (the last axis of a
Flax kernel) instead. Scalars statistics are computed in float64 on the host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.config import check_choice
from transfusion_jax.init.random import random_init
from transfusion_jax.init.transfer import require_source
from transfusion_jax.weights import flatten, unflatten

Variables = dict[str, Any]
BATCHNORM_CHOICES = ("mean_var", "pretrained", "reset")


def _moments(value: np.ndarray, per: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation, over the whole tensor or per output channel."""
    value = np.asarray(value, np.float64)
    if per == "channel" and value.ndim >= 2:
        axes = tuple(range(value.ndim - 1))
        return value.mean(axis=axes), value.std(axis=axes)
    return np.asarray(value.mean()), np.asarray(value.std())


def mean_var_init(rng: jax.Array, template: Variables, *, source: Variables | None = None,
                  per: str = "tensor", batchnorm: str = "mean_var",
                  dont_load: Iterable[str] = (), scheme: str = "he_normal") -> Variables:
    """Draws each parameter from N(mean, var) of the matching pretrained parameter.

    Args:
      rng: PRNG key.
      template: the model's variables.
      source: pretrained variables (same names and shapes for the paths used).
      per: ``"tensor"`` (one mean/var per tensor, the paper) or ``"channel"`` (per output
        channel, the last axis; vectors such as biases stay per tensor).
      batchnorm: BatchNorm ``scale``/``bias``: ``"mean_var"`` like other parameters,
        ``"pretrained"`` copied, ``"reset"`` to 1/0.
      dont_load: regexes of paths (inside their collection) drawn by ``scheme`` instead
        (e.g. ``'^head/'`` for a new head).
      scheme: random scheme for those paths.

    Returns:
      Variables like ``template``; running BatchNorm statistics start at mean 0, var 1.
    """
    source = require_source("mean_var", source)
    check_choice("init.options.per", per, ("tensor", "channel"))
    check_choice("init.options.batchnorm", batchnorm, BATCHNORM_CHOICES)
    patterns = [re.compile(p) for p in dont_load]
    random = flatten(random_init(rng, template, scheme=scheme))
    src = flatten(source)
    keys = jax.random.split(jax.random.fold_in(rng, 1), len(random))
    out = {}
    for key, (path, value) in zip(keys, sorted(random.items()), strict=True):
        collection, inner = path.split("/", 1)
        is_bn = inner.rsplit("/", 1)[-1] in ("scale", "bias") and _is_batchnorm(inner, random)
        if collection != "params" or any(p.search(inner) for p in patterns):
            out[path] = value  # running statistics reset; dont_load paths random
            continue
        if path not in src or np.shape(src[path]) != value.shape:
            raise ValueError(f"mean_var: pretrained source has no tensor {path} of shape "
                             f"{value.shape}; add it to init.options.dont_load")
        if is_bn and batchnorm != "mean_var":
            out[path] = (jnp.asarray(src[path], value.dtype) if batchnorm == "pretrained"
                         else value)
            continue
        mean, std = _moments(src[path], per)
        noise = jax.random.normal(key, value.shape, jnp.float32)
        out[path] = (mean + std * np.asarray(noise, np.float64)).astype(value.dtype)
    return unflatten({p: jnp.asarray(v) for p, v in out.items()})


def _is_batchnorm(inner: str, flat: dict[str, Any]) -> bool:
    """A ``scale``/``bias`` whose module also has running statistics is BatchNorm."""
    module = inner.rsplit("/", 1)[0]
    return f"batch_stats/{module}/mean" in flat
