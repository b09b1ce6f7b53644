"""InceptionV1 (GoogLeNet) with torchvision's structure and Lucid / TF-slim layer names.

The network is torchvision's ``googlenet`` (BatchNorm after every convolution, 3x3 kernels in
the "5x5" branch as in torchvision's weights, ceil-mode max-pools), so torchvision state dicts
convert one-to-one. Its blocks carry the names of Lucid's InceptionV1, which Gonthier et al.
2020 use:

==============================  ==========================================
torchvision                     Flax path / ``out`` key
==============================  ==========================================
``conv1``, ``conv2``, ``conv3``  ``conv2d0``, ``conv2d1``, ``conv2d2`` (each ``conv``, ``bn``)
``inception3a`` .. ``5b``       ``mixed3a``, ``mixed3b``, ``mixed4a`` .. ``mixed4e``,
                                ``mixed5a``, ``mixed5b``
``inceptionXY.branch2.0``       ``mixedXY/branch2_0`` (likewise ``branch3_*``, ``branch4_1``)
``fc``                          ``head``
==============================  ==========================================

``out`` holds each block's post-ReLU output (before the max-pools): for a 224x224 input
conv2d0 is 112 wide, conv2d1 and conv2d2 56, mixed3* 28, mixed4* 14, mixed5* 7, plus
``pre_logits`` ``(n, 1024)`` and ``logits``. The auxiliary classifiers are not built.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from transfusion_jax.models.conv import Conv
from transfusion_jax.models.head import pooled_head
from transfusion_jax.models.inputs import imagenet_to_inception_range
from transfusion_jax.models.pool import max_pool

# (name, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj) as torchvision's Inception.
_MIXED = (
    ("mixed3a", 64, 96, 128, 16, 32, 32),
    ("mixed3b", 128, 128, 192, 32, 96, 64),
    ("mixed4a", 192, 96, 208, 16, 48, 64),
    ("mixed4b", 160, 112, 224, 24, 64, 64),
    ("mixed4c", 128, 128, 256, 24, 64, 64),
    ("mixed4d", 112, 144, 288, 32, 64, 64),
    ("mixed4e", 256, 160, 320, 32, 128, 128),
    ("mixed5a", 256, 160, 320, 32, 128, 128),
    ("mixed5b", 384, 192, 384, 48, 128, 128),
)
_POOL_AFTER = {"conv2d2": 3, "mixed3b": 3, "mixed4e": 2}  # ceil-mode max-pool kernel, stride 2


def max_pool_ceil(x: jnp.ndarray, window: int, stride: int, padding: int = 0, *,
                  impl: str = "auto") -> jnp.ndarray:
    """Max-pool like torch's ``MaxPool2d(window, stride, padding, ceil_mode=True)``.

    Args:
      x: ``(n, h, w, c)``.
      impl: the model's ``conv_impl`` (`transfusion_jax.models.pool.max_pool`).

    Returns:
      ``(n, h_out, w_out, c)`` with ``h_out = ceil((h + 2 * padding - window) / stride) + 1``,
      less one when the last window would start in the right padding (torch's rule).
    """
    pads = []
    for size in x.shape[1:3]:
        n_out = math.ceil((size + 2 * padding - window) / stride) + 1
        if (n_out - 1) * stride >= size + padding:
            n_out -= 1
        pads.append((padding, (n_out - 1) * stride + window - size - padding))
    return max_pool(x, (window, window), (stride, stride), pads, impl=impl)


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU, torchvision's ``BasicConv2d``."""

    features: int
    kernel: int
    strides: int = 1
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        p = self.kernel // 2
        x = Conv(self.features, (self.kernel, self.kernel), (self.strides, self.strides),
                 padding=((p, p), (p, p)), use_bias=False, dtype=self.dtype,
                 kernel_init=nn.initializers.truncated_normal(0.01), impl=self.conv_impl,
                 name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3,
                         dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


class Inception(nn.Module):
    """1x1 | 1x1-3x3 | 1x1-3x3 ("5x5") | max-pool 3x3/1 - 1x1, concatenated on channels."""

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """``(n, h, w, c_in) -> (n, h, w, ch1x1 + ch3x3 + ch5x5 + pool_proj)``."""
        def conv(f, k, name):
            return BasicConv2d(f, k, dtype=self.dtype, conv_impl=self.conv_impl, name=name)

        b1 = conv(self.ch1x1, 1, "branch1")(x, train=train)
        b2 = conv(self.ch3x3red, 1, "branch2_0")(x, train=train)
        b2 = conv(self.ch3x3, 3, "branch2_1")(b2, train=train)
        b3 = conv(self.ch5x5red, 1, "branch3_0")(x, train=train)
        b3 = conv(self.ch5x5, 3, "branch3_1")(b3, train=train)
        pooled = max_pool_ceil(x, 3, 1, 1, impl=self.conv_impl)
        b4 = conv(self.pool_proj, 1, "branch4_1")(pooled, train=train)
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class GoogLeNet(nn.Module):
    """InceptionV1 (Szegedy et al. 2015) as torchvision builds it, with Lucid's layer names.

    Attributes:
      num_classes: outputs of the linear head.
      transform_input: map ImageNet-normalised inputs to the ``(x - 0.5) / 0.5`` scaling
        torchvision's pretrained GoogLeNet expects (torchvision sets it for that model).
      dropout_rate: dropout before the head in training (needs a ``dropout`` RNG when > 0;
        torchvision uses 0.2).
      dtype: computation dtype (parameters stay float32).
      conv_impl: how convolutions are computed (`transfusion_jax.models.conv.CONV_IMPLS`).
    """

    num_classes: int
    transform_input: bool = False
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def block_names(self) -> tuple[str, ...]:
        """Top-level parameter groups in forward order (Lucid's layer names, then ``head``)."""
        return ("conv2d0", "conv2d1", "conv2d2") + tuple(m[0] for m in _MIXED) + ("head",)

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False):
        """Forward pass.

        Args:
          x: images ``(n, h, w, 3)``, h and w at least 32 (224 is the native size).
          train: use batch statistics (and update the running ones) when True.

        Returns:
          ``(logits, out)``: logits ``(n, num_classes)`` float32; ``out`` maps ``conv2d0`` ..
          ``mixed5b`` to ``(n, h_i, w_i, c_i)`` and has ``pre_logits`` ``(n, 1024)``, ``logits``.
        """
        x = x.astype(self.dtype)
        if self.transform_input:
            x = imagenet_to_inception_range(x, self.dtype)
        out = {}
        x = BasicConv2d(64, 7, 2, self.dtype, self.conv_impl, name="conv2d0")(x, train=train)
        out["conv2d0"] = x
        x = max_pool_ceil(x, 3, 2, impl=self.conv_impl)
        x = BasicConv2d(64, 1, 1, self.dtype, self.conv_impl, name="conv2d1")(x, train=train)
        out["conv2d1"] = x
        x = BasicConv2d(192, 3, 1, self.dtype, self.conv_impl, name="conv2d2")(x, train=train)
        out["conv2d2"] = x
        x = max_pool_ceil(x, 3, 2, impl=self.conv_impl)
        for name, *channels in _MIXED:
            x = Inception(*channels, dtype=self.dtype, conv_impl=self.conv_impl,
                          name=name)(x, train=train)
            out[name] = x
            if name in _POOL_AFTER:
                x = max_pool_ceil(x, _POOL_AFTER[name], 2, impl=self.conv_impl)
        logits = pooled_head(x, out, num_classes=self.num_classes, dtype=self.dtype,
                             train=train, dropout_rate=self.dropout_rate,
                             kernel_init=nn.initializers.truncated_normal(0.01))
        return logits, out


def make_googlenet(num_classes: int, *, transform_input: bool = False,
                   dropout_rate: float = 0.0, dtype: Any = jnp.float32,
                   conv_impl: str = "auto") -> GoogLeNet:
    """Builds `GoogLeNet` (6,624,904 parameters for 1000 classes, as torchvision's)."""
    return GoogLeNet(num_classes=num_classes, transform_input=transform_input,
                     dropout_rate=dropout_rate, dtype=dtype, conv_impl=conv_impl)
