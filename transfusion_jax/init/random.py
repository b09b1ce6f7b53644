"""Random initialisation by a named scheme, per layer type, for any model.

Layer types are read from the parameter tree: a ``kernel`` of rank 4 is a convolution
``(h, w, in, out)``, of rank 2 a dense layer ``(in, out)``; ``bias`` starts at 0, BatchNorm
``scale`` at 1, and running statistics at mean 0 / variance 1.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from transfusion_jax.config import ConfigError

# scheme -> (scale, mode, distribution) for jax.nn.initializers.variance_scaling
SCHEMES: dict[str, tuple[float, str, str]] = {
    "he_normal": (2.0, "fan_in", "truncated_normal"),  # Kaiming normal, fan-in
    "he_normal_fan_out": (2.0, "fan_out", "normal"),  # torchvision's ResNet choice
    "he_uniform": (2.0, "fan_in", "uniform"),
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
    "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
}

Variables = dict[str, Any]


def _kernel_init(scheme: str, stddev: float):
    if scheme == "truncated_normal":
        return jax.nn.initializers.truncated_normal(stddev)
    scale, mode, distribution = SCHEMES[scheme]
    return jax.nn.initializers.variance_scaling(scale, mode, distribution)


def random_init(rng: jax.Array, template: Variables, *, source: Variables | None = None,
                scheme: str = "he_normal", stddev: float = 0.01,
                head_scheme: str | None = None) -> Variables:
    """Draws fresh random variables shaped like ``template``.

    Args:
      rng: PRNG key.
      template: ``{"params": ..., "batch_stats": ...}`` of the model (shapes and dtypes).
      source: unused (random init needs no source); accepted for a uniform signature.
      scheme: one of `SCHEMES` or ``"truncated_normal"`` (with ``stddev``) for kernels.
      stddev: standard deviation for ``scheme="truncated_normal"``.
      head_scheme: optional different scheme for rank-2 (dense) kernels.

    Returns:
      Variables with the template's structure, shapes and dtypes.
    """
    del source
    valid = (*SCHEMES, "truncated_normal")
    for name in (scheme, head_scheme):
        if name is not None and name not in valid:
            raise ConfigError(f"unknown random scheme {name!r}; valid: {', '.join(valid)}")
    flat = traverse_util.flatten_dict(template)
    keys = jax.random.split(rng, len(flat))
    out = {}
    for key, (path, value) in zip(keys, sorted(flat.items()), strict=True):
        leaf = path[-1]
        if leaf == "kernel" and value.ndim >= 2:
            use = head_scheme if (head_scheme and value.ndim == 2) else scheme
            out[path] = _kernel_init(use, stddev)(key, value.shape, value.dtype)
        elif leaf in ("scale", "var"):
            out[path] = jnp.ones(value.shape, value.dtype)
        else:  # bias, BatchNorm bias and mean, anything else
            out[path] = jnp.zeros(value.shape, value.dtype)
    return traverse_util.unflatten_dict(out)
