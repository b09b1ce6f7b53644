"""Strategies that start from a pretrained source: pretrained, transfusion, slim, reinit,
shuffled.

Trees are handled flat: ``"params/block1/conv/kernel"`` -> array (`weights.flatten`); the
*block* of a path is its first module name (``block1``), and a model lists its blocks in
forward order (``model.block_names()``, passed here as ``blocks``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.config import ConfigError
from transfusion_jax.init.random import random_init
from transfusion_jax.weights import flatten, merge_params, unflatten

Variables = dict[str, Any]


def block_of(path: str) -> str:
    """``"params/block1/conv/kernel"`` -> ``"block1"``."""
    return path.split("/")[1]


def require_source(name: str, source: Variables | None) -> Variables:
    if source is None:
        raise ConfigError(f"initializer {name!r} needs pretrained weights: set init.source to "
                          "a weight file (.pth/.npz/.safetensors) or a run's checkpoint folder")
    return source


def _check_blocks(name: str, blocks: Sequence[str], template: Variables) -> None:
    if not blocks:
        raise ConfigError(f"initializer {name!r} needs the model's block order (blocks=...)")
    unknown = sorted({block_of(p) for p in flatten(template)} - set(blocks))
    if unknown:
        raise ConfigError(f"parameter groups {unknown} are not in the model's blocks {blocks}")


def pretrained_init(rng: jax.Array, template: Variables, *, source: Variables | None = None,
                    dont_load: Iterable[str] = (), scheme: str = "he_normal") -> Variables:
    """Every variable from ``source``, except paths matching ``dont_load`` (regexes inside a
    collection, e.g. ``'^head/'`` for a new head), which are drawn at random by ``scheme``.

    Raises `WeightMismatchError` listing every missing, unexpected and wrongly shaped path.
    """
    source = require_source("pretrained", source)
    return merge_params(random_init(rng, template, scheme=scheme), source,
                        dont_load=tuple(dont_load))


def _prefix_pretrained(rng: jax.Array, template: Variables, source: Variables,
                       keep: set[str], scheme: str) -> Variables:
    """Blocks in ``keep`` from ``source``, the others freshly random (``scheme``)."""
    random = random_init(rng, template, scheme=scheme)
    others = {block_of(p) for p in flatten(template)} - keep
    # merge_params keeps the random values of every block outside the prefix.
    return merge_params(random, _only_blocks(source, keep),
                        dont_load=tuple(f"^{re.escape(b)}/" for b in sorted(others)))


def _only_blocks(source: Variables, keep: set[str]) -> Variables:
    return unflatten({p: v for p, v in flatten(source).items() if block_of(p) in keep})


def transfusion_init(rng: jax.Array, template: Variables, *, source: Variables | None = None,
                     k: int = 0, blocks: Sequence[str] = (),
                     scheme: str = "he_normal") -> Variables:
    """Weight transfusion (Raghu et al. 2019): the first ``k`` blocks pretrained, rest random.

    Args:
      k: how many leading blocks (of ``blocks``) to copy; 0 = all random,
        ``len(blocks)`` = everything pretrained.
      blocks: the model's block names in forward order.
      scheme: random scheme for the other blocks.
    """
    source = require_source("transfusion", source)
    _check_blocks("transfusion", blocks, template)
    if not 0 <= k <= len(blocks):
        raise ConfigError(f"transfusion k={k} must be in [0, {len(blocks)}] (blocks: {blocks})")
    return _prefix_pretrained(rng, template, source, set(blocks[:k]), scheme)


def slim_init(rng: jax.Array, template: Variables, *, source: Variables | None = None,
              through: str = "", blocks: Sequence[str] = (),
              scheme: str = "he_normal") -> Variables:
    """Pretrained bottom up to and including block ``through``, random (thinner) top.

    Pair it with a slim model (e.g. ``slim_resnet50``) whose blocks after ``through`` are
    narrower than the source's: those are drawn at random, so their shapes need not match.
    """
    source = require_source("slim", source)
    _check_blocks("slim", blocks, template)
    if through not in blocks:
        raise ConfigError(f"slim: through={through!r} is not a block; blocks: {blocks}")
    keep = set(blocks[: blocks.index(through) + 1])
    return _prefix_pretrained(rng, template, source, keep, scheme)


def reinit_init(rng: jax.Array, template: Variables, *, source: Variables | None = None,
                n: int = 1, blocks: Sequence[str] = (), scheme: str = "he_normal") -> Variables:
    """Pretrained everywhere except the top ``n`` blocks, which are re-initialised."""
    source = require_source("reinit", source)
    _check_blocks("reinit", blocks, template)
    if not 0 <= n <= len(blocks):
        raise ConfigError(f"reinit n={n} must be in [0, {len(blocks)}] (blocks: {blocks})")
    return _prefix_pretrained(rng, template, source, set(blocks[: len(blocks) - n]),
                              scheme)


def shuffled_init(rng: jax.Array, template: Variables, *, source: Variables | None = None,
                  dont_load: Iterable[str] = (), scheme: str = "he_normal") -> Variables:
    """A control: each pretrained tensor with its values randomly permuted.

    Keeps every tensor's value distribution exactly and destroys its structure. Paths in
    ``dont_load`` are drawn by ``scheme``; running BatchNorm statistics are permuted like the
    parameters they belong to.
    """
    merged = pretrained_init(rng, template, source=source, dont_load=dont_load, scheme=scheme)
    patterns = [re.compile(p) for p in dont_load]
    flat = flatten(merged)
    keys = jax.random.split(rng, len(flat))
    out = {}
    for key, (path, value) in zip(keys, sorted(flat.items()), strict=True):
        inner = path.split("/", 1)[1]
        if any(p.search(inner) for p in patterns):
            out[path] = value
        else:
            perm = np.asarray(jax.random.permutation(key, value.size))
            out[path] = jnp.asarray(np.asarray(value).reshape(-1)[perm].reshape(value.shape))
    return unflatten(out)
