"""ResNet-18/34/50 with torchvision's structure (ResNet v1.5: stride on the 3x3 conv).

Layer names follow torchvision so its state dicts convert one-to-one
(`transfusion_jax.weights.name_maps`); only the grouping differs:

=========================  ======================================
torchvision                Flax path
=========================  ======================================
``conv1``, ``bn1``         ``stem/conv1``, ``stem/bn1``
``layer{i}.{j}.conv1``     ``block{i}/unit{j}/conv1`` (same for bn, conv2, ...)
``layer{i}.{j}.downsample.0`` / ``.1``  ``block{i}/unit{j}/downsample_conv`` / ``downsample_bn``
``fc``                     ``head``
=========================  ======================================

The top-level parameter groups are ``stem, block1, block2, block3, block4, head``
(`ResNet.block_names`), and ``out`` holds the output of each of them but the head:
``stem`` (after the max-pool, ``(n, h/4, w/4, 64)``), ``block1..block4`` (strides 4, 8, 16,
32), ``pre_logits`` (global average pool) and ``logits``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from transfusion_jax.models.conv import Conv
from transfusion_jax.models.head import pooled_head
from transfusion_jax.models.pool import max_pool

# He normal with fan-out, as torchvision initialises ResNet convolutions.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# depth -> (units per stage, bottleneck?)
RESNET_SPECS: dict[int, tuple[tuple[int, ...], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


def _batch_norm(name: str, train: bool, dtype: Any, zero: bool = False) -> nn.BatchNorm:
    """torchvision's BatchNorm2d defaults (eps 1e-5, torch momentum 0.1 = Flax 0.9)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                        scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
                        name=name)


class ResidualUnit(nn.Module):
    """A BasicBlock (two 3x3 convs) or a Bottleneck (1x1, 3x3 with the stride, 1x1 x4).

    Attributes:
      features: width of the unit (output channels are ``features * 4`` for a bottleneck).
      strides: stride of the 3x3 convolution (and of the projection shortcut).
      bottleneck: Bottleneck unit when True, BasicBlock otherwise.
      zero_init_residual: initialise the last BatchNorm scale of the branch to zero.
      dtype: computation dtype.
      conv_impl: how convolutions are computed (`transfusion_jax.models.conv.CONV_IMPLS`).
    """

    features: int
    strides: int = 1
    bottleneck: bool = False
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """``(n, h, w, c_in) -> (n, h / strides, w / strides, c_out)``."""
        conv = partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init,
                       impl=self.conv_impl)
        bn = partial(_batch_norm, train=train, dtype=self.dtype)
        s = (self.strides, self.strides)
        if self.bottleneck:
            out_features = self.features * 4
            y = conv(self.features, (1, 1), padding="VALID", name="conv1")(x)
            y = nn.relu(bn("bn1")(y))
            y = conv(self.features, (3, 3), s, padding=((1, 1), (1, 1)), name="conv2")(y)
            y = nn.relu(bn("bn2")(y))
            y = conv(out_features, (1, 1), padding="VALID", name="conv3")(y)
            y = bn("bn3", zero=self.zero_init_residual)(y)
        else:
            out_features = self.features
            y = conv(self.features, (3, 3), s, padding=((1, 1), (1, 1)), name="conv1")(x)
            y = nn.relu(bn("bn1")(y))
            y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
            y = bn("bn2", zero=self.zero_init_residual)(y)
        if self.strides != 1 or x.shape[-1] != out_features:
            x = conv(out_features, (1, 1), s, padding="VALID", name="downsample_conv")(x)
            x = bn("downsample_bn")(x)
        return nn.relu(x + y)


class ResNetStage(nn.Module):
    """``num_units`` residual units; the first carries the stride (torchvision ``layer{i}``)."""

    features: int
    num_units: int
    strides: int
    bottleneck: bool
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        for j in range(self.num_units):
            x = ResidualUnit(self.features, self.strides if j == 0 else 1, self.bottleneck,
                             self.zero_init_residual, self.dtype, self.conv_impl,
                             name=f"unit{j}")(x, train=train)
        return x


class ResNetStem(nn.Module):
    """conv 7x7/2 (pad 3) -> BatchNorm -> ReLU -> max-pool 3x3/2 (pad 1)."""

    features: int = 64
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """``(n, h, w, 3) -> (n, ceil(h / 4), ceil(w / 4), features)``."""
        x = Conv(self.features, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                 dtype=self.dtype, kernel_init=conv_init, impl=self.conv_impl, name="conv1")(x)
        x = nn.relu(_batch_norm("bn1", train, self.dtype)(x))
        return max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), impl=self.conv_impl)


class ResNet(nn.Module):
    """ResNet with torchvision's layout.

    Attributes:
      num_classes: outputs of the linear head.
      stage_sizes: residual units per stage, e.g. ``(3, 4, 6, 3)``.
      bottleneck: Bottleneck units (ResNet-50 and deeper) instead of BasicBlocks.
      widths: per-stage multipliers on the channel counts 64, 128, 256, 512 (a slim top is
        ``(1, 1, 0.25, 0.25)``, see `transfusion_jax.models.slim_resnet`).
      zero_init_residual: zero the last BatchNorm scale of each residual branch.
      dtype: computation dtype (parameters stay float32).
      conv_impl: how convolutions are computed (`transfusion_jax.models.conv.CONV_IMPLS`).
    """

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    widths: Sequence[float] = (1.0, 1.0, 1.0, 1.0)
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def block_names(self) -> tuple[str, ...]:
        """Top-level parameter groups in forward order (the transfusion prefix order)."""
        return ("stem",) + tuple(f"block{i + 1}" for i in range(len(self.stage_sizes))) + (
            "head",)

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False):
        """Forward pass.

        Args:
          x: images ``(n, h, w, 3)``, float (normalised as the weights expect).
          train: use batch statistics (and update the running ones) when True.

        Returns:
          ``(logits, out)``: logits ``(n, num_classes)`` float32; ``out`` has ``stem``
          ``(n, h/4, w/4, 64)``, ``block{i}`` ``(n, h/2^(i+1), w/2^(i+1), c_i)`` with
          ``c_i = 64 * 2^(i-1)`` (times 4 for bottlenecks), ``pre_logits`` ``(n, c_4)`` and
          ``logits``.
        """
        if len(self.widths) != len(self.stage_sizes):
            raise ValueError(f"ResNet needs one width per stage: got {len(self.widths)} widths "
                             f"for {len(self.stage_sizes)} stages.")
        out = {}
        x = ResNetStem(64, self.dtype, self.conv_impl, name="stem")(x.astype(self.dtype),
                                                                    train=train)
        out["stem"] = x
        for i, (units, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            name = f"block{i + 1}"
            features = max(1, round(64 * 2**i * width))
            x = ResNetStage(features, units, 1 if i == 0 else 2, self.bottleneck,
                            self.zero_init_residual, self.dtype, self.conv_impl,
                            name=name)(x, train=train)
            out[name] = x
        logits = pooled_head(x, out, num_classes=self.num_classes, dtype=self.dtype)
        return logits, out


def make_resnet(depth: int):
    """A constructor ``(num_classes, **options) -> ResNet`` for ``RESNET_SPECS[depth]``."""
    stage_sizes, bottleneck = RESNET_SPECS[depth]

    def build(num_classes: int, *, widths: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
              zero_init_residual: bool = False, dtype: Any = jnp.float32,
              conv_impl: str = "auto") -> ResNet:
        return ResNet(num_classes=num_classes, stage_sizes=stage_sizes, bottleneck=bottleneck,
                      widths=tuple(widths), zero_init_residual=zero_init_residual, dtype=dtype,
                      conv_impl=conv_impl)

    build.__name__ = f"make_resnet{depth}"
    return build
