"""Synthetic Gabor filters in the first convolution, the rest random (Raghu et al. 2019).

Output channel ``c`` of the first conv gets the Gabor filter number ``c`` of a grid over
orientations x frequencies x phases (cycled when there are more channels than grid points),
the same on every input channel, rescaled to the standard deviation the random scheme would
give that kernel so that activations keep their scale. The other parameters are drawn at
random (``rest="random"``) or kept from the template (``rest="keep"``, to compose after
another strategy, e.g. ``pretrained+gabor``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.config import ConfigError, check_choice
from transfusion_jax.init.random import random_init
from transfusion_jax.weights import flatten, unflatten

Variables = dict[str, Any]


def gabor_filter(size: int, theta: float, frequency: float, phase: float,
                 sigma: float) -> np.ndarray:
    """One ``(size, size)`` Gabor filter: a Gaussian envelope times a cosine grating.

    Args:
      theta: orientation of the grating in radians.
      frequency: cycles per pixel.
      phase: grating phase in radians.
      sigma: envelope width as a fraction of ``size``.
    """
    half = (size - 1) / 2.0
    y, x = np.mgrid[-half: half + 1, -half: half + 1]
    rotated = x * np.cos(theta) + y * np.sin(theta)
    envelope = np.exp(-(x**2 + y**2) / (2 * (sigma * size) ** 2))
    g = envelope * np.cos(2 * np.pi * frequency * rotated + phase)
    return g - g.mean()


def gabor_bank(size: int, count: int, *, orientations: int = 8,
               frequencies: Sequence[float] = (0.15, 0.3), phases: Sequence[float] = (0.0,
                                                                                     np.pi / 2),
               sigma: float = 0.3) -> np.ndarray:
    """``(size, size, count)`` filters cycling over the orientation x frequency x phase grid."""
    grid = list(itertools.product(np.arange(orientations) * np.pi / orientations,
                                  frequencies, phases))
    filters = [gabor_filter(size, t, f, p, sigma) for t, f, p in grid]
    return np.stack([filters[c % len(filters)] for c in range(count)], axis=-1)


def gabor_init(rng: jax.Array, template: Variables, *, source: Variables | None = None,
               blocks: Sequence[str] = (), scheme: str = "he_normal", orientations: int = 8,
               frequencies: Sequence[float] = (0.15, 0.3),
               phases: Sequence[float] = (0.0, np.pi / 2), sigma: float = 0.3,
               rest: str = "random") -> Variables:
    """The first conv kernel (in block order) replaced by a Gabor bank; the rest random by
    ``scheme`` (``rest="random"``) or the template's (``rest="keep"``)."""
    del source
    check_choice("init.options.rest", rest, ("random", "keep"))
    drawn = flatten(random_init(rng, template, scheme=scheme))
    out = drawn if rest == "random" else flatten(template)
    order = {b: i for i, b in enumerate(blocks)}
    convs = [p for p, v in out.items()
             if p.startswith("params/") and p.endswith("/kernel") and v.ndim == 4]
    if not convs:
        raise ConfigError("gabor: the model has no convolution kernel")
    first = min(convs, key=lambda p: (order.get(p.split("/")[1], len(order)), p))
    kh, kw, cin, cout = out[first].shape
    if kh != kw or kh < 3:
        raise ConfigError(f"gabor: first conv {first} has a {kh}x{kw} kernel; need square >= 3")
    bank = gabor_bank(kh, cout, orientations=orientations, frequencies=frequencies,
                      phases=phases, sigma=sigma)
    kernel = np.repeat(bank[:, :, None, :], cin, axis=2)
    # The scale the random scheme gives this kernel, so activations keep their size.
    kernel *= float(np.std(drawn[first])) / max(float(kernel.std()), 1e-12)
    out[first] = jnp.asarray(kernel, out[first].dtype)
    return unflatten(out)
