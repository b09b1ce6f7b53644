"""Slim ResNets (Raghu et al. 2019, "Transfusion"): a full-width, pretrained-compatible bottom
up to a named block, and a thinner, randomly initialised top.

A slim ResNet is a `transfusion_jax.models.resnet.ResNet` whose stages after ``keep_through``
have ``top_width`` times the usual channels. Parameter names are the ResNet's, so the bottom
(``stem`` .. ``keep_through``) loads from ordinary ResNet weights; `slim_dont_load` gives the
``dont_load`` patterns that leave the thin top (and the head) at their random initialisation::

    model = MODELS["slim_resnet50"](num_classes, keep_through="block2", top_width=0.25)
    variables = load_pretrained("slim_resnet50", "resnet50.pth", template,
                                dont_load=slim_dont_load("block2"))

The paper's slim model keeps the pretrained bottom through block 2 and thins the rest;
the default ``top_width`` of 0.25 is this toolkit's choice (an option, not the paper's value).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from transfusion_jax.models.resnet import RESNET_SPECS, ResNet

_STAGES = ("block1", "block2", "block3", "block4")


def _stage_widths(keep_through: str, top_width: float) -> tuple[float, ...]:
    if keep_through not in ("stem",) + _STAGES:
        raise ValueError(f"keep_through must be one of stem, {', '.join(_STAGES)}; "
                         f"got {keep_through!r}")
    kept = 0 if keep_through == "stem" else _STAGES.index(keep_through) + 1
    return tuple(1.0 if i < kept else float(top_width) for i in range(len(_STAGES)))


def slim_dont_load(keep_through: str) -> tuple[str, ...]:
    """Regexes matching every parameter path above ``keep_through`` (thin blocks and head).

    Args:
      keep_through: last full-width group: ``stem`` or ``block1`` .. ``block4``.

    Returns:
      patterns for ``merge_params(..., dont_load=...)``, e.g. ``('^block3/', '^block4/',
      '^head/')`` for ``keep_through='block2'``.
    """
    _stage_widths(keep_through, 1.0)
    kept = 0 if keep_through == "stem" else _STAGES.index(keep_through) + 1
    return tuple(f"^{name}/" for name in _STAGES[kept:]) + ("^head/",)


def make_slim_resnet(depth: int):
    """A constructor ``(num_classes, **options) -> ResNet`` with a thin top.

    The constructor takes ``keep_through`` (default ``"block2"``), ``top_width`` (default
    0.25), ``zero_init_residual``, ``dtype`` and ``conv_impl``.
    """
    stage_sizes, bottleneck = RESNET_SPECS[depth]

    def build(num_classes: int, *, keep_through: str = "block2", top_width: float = 0.25,
              zero_init_residual: bool = False, dtype: Any = jnp.float32,
              conv_impl: str = "auto") -> ResNet:
        if not top_width > 0:
            raise ValueError(f"top_width must be positive, got {top_width}")
        return ResNet(num_classes=num_classes, stage_sizes=stage_sizes, bottleneck=bottleneck,
                      widths=_stage_widths(keep_through, top_width),
                      zero_init_residual=zero_init_residual, dtype=dtype,
                      conv_impl=conv_impl)

    build.__name__ = f"make_slim_resnet{depth}"
    return build
