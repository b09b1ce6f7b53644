"""Inception-v3 with torchvision's structure and names (eval-mode parity with torchvision).

Every torchvision module keeps its name with ``/`` for ``.``: ``Mixed_5b.branch1x1.conv`` is
``Mixed_5b/branch1x1/conv`` and ``.bn`` is ``/bn``; the classifier ``fc`` is ``head``. The
top-level parameter groups, in forward order (`InceptionV3.block_names`), are
``Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3, Conv2d_3b_1x1, Conv2d_4a_3x3, Mixed_5b, Mixed_5c,
Mixed_5d, Mixed_6a, Mixed_6b, Mixed_6c, Mixed_6d, Mixed_6e, [AuxLogits,] Mixed_7a, Mixed_7b,
Mixed_7c, head``; ``out`` holds the output of each group but the head (post-ReLU maps, before
the max-pools), plus ``pre_logits``, ``logits`` and, with ``aux_logits=True``, ``aux_logits``.

For a 299x299 input the maps are 149, 147, 147, 73, 71 pixels wide for the five convolutions,
35 for Mixed_5*, 17 for Mixed_6*, 8 for Mixed_7*. The smallest input is 75x75.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from transfusion_jax.models.conv import Conv
from transfusion_jax.models.head import pooled_head
from transfusion_jax.models.inputs import imagenet_to_inception_range
from transfusion_jax.models.pool import max_pool

Pad = str | Sequence[tuple[int, int]]


def _pad(ph: int, pw: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((ph, ph), (pw, pw))


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU, torchvision's ``BasicConv2d``."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: Pad = "VALID"
    stddev: float = 0.1
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = Conv(self.features, self.kernel, (self.strides, self.strides),
                 padding=self.padding, use_bias=False, dtype=self.dtype,
                 kernel_init=nn.initializers.truncated_normal(self.stddev),
                 impl=self.conv_impl, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3,
                         dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jnp.ndarray) -> jnp.ndarray:
    # torch avg_pool2d(3, stride 1, padding 1) counts the zero padding (count_include_pad).
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


def _max_pool_3x3_s2(x: jnp.ndarray, impl: str) -> jnp.ndarray:
    return max_pool(x, (3, 3), (2, 2), "VALID", impl=impl)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-pool-1x1 (Mixed_5b..5d)."""

    pool_features: int
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        def conv(f, k, p="VALID", name=None):
            return BasicConv2d(f, k, padding=p, dtype=self.dtype, conv_impl=self.conv_impl,
                               name=name)

        b1 = conv(64, (1, 1), name="branch1x1")(x, train=train)
        b5 = conv(48, (1, 1), name="branch5x5_1")(x, train=train)
        b5 = conv(64, (5, 5), _pad(2, 2), name="branch5x5_2")(b5, train=train)
        b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x, train=train)
        b3 = conv(96, (3, 3), _pad(1, 1), name="branch3x3dbl_2")(b3, train=train)
        b3 = conv(96, (3, 3), _pad(1, 1), name="branch3x3dbl_3")(b3, train=train)
        bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x), train=train)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        conv = partial(BasicConv2d, dtype=self.dtype, conv_impl=self.conv_impl)
        b3 = conv(384, (3, 3), 2, name="branch3x3")(x, train=train)
        bd = conv(64, (1, 1), name="branch3x3dbl_1")(x, train=train)
        bd = conv(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(bd, train=train)
        bd = conv(96, (3, 3), 2, name="branch3x3dbl_3")(bd, train=train)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x, self.conv_impl)], axis=-1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""

    channels_7x7: int
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        c7 = self.channels_7x7

        def conv(f, k, p="VALID", name=None):
            return BasicConv2d(f, k, padding=p, dtype=self.dtype, conv_impl=self.conv_impl,
                               name=name)

        b1 = conv(192, (1, 1), name="branch1x1")(x, train=train)
        b7 = conv(c7, (1, 1), name="branch7x7_1")(x, train=train)
        b7 = conv(c7, (1, 7), _pad(0, 3), name="branch7x7_2")(b7, train=train)
        b7 = conv(192, (7, 1), _pad(3, 0), name="branch7x7_3")(b7, train=train)
        bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x, train=train)
        bd = conv(c7, (7, 1), _pad(3, 0), name="branch7x7dbl_2")(bd, train=train)
        bd = conv(c7, (1, 7), _pad(0, 3), name="branch7x7dbl_3")(bd, train=train)
        bd = conv(c7, (7, 1), _pad(3, 0), name="branch7x7dbl_4")(bd, train=train)
        bd = conv(192, (1, 7), _pad(0, 3), name="branch7x7dbl_5")(bd, train=train)
        bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x), train=train)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        def conv(f, k, s=1, p="VALID", name=None):
            return BasicConv2d(f, k, s, padding=p, dtype=self.dtype,
                               conv_impl=self.conv_impl, name=name)

        b3 = conv(192, (1, 1), name="branch3x3_1")(x, train=train)
        b3 = conv(320, (3, 3), 2, name="branch3x3_2")(b3, train=train)
        b7 = conv(192, (1, 1), name="branch7x7x3_1")(x, train=train)
        b7 = conv(192, (1, 7), p=_pad(0, 3), name="branch7x7x3_2")(b7, train=train)
        b7 = conv(192, (7, 1), p=_pad(3, 0), name="branch7x7x3_3")(b7, train=train)
        b7 = conv(192, (3, 3), 2, name="branch7x7x3_4")(b7, train=train)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x, self.conv_impl)], axis=-1)


class InceptionE(nn.Module):
    """8x8 block with expanded 1x3 / 3x1 filter banks (Mixed_7b, Mixed_7c)."""

    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        def conv(f, k, p="VALID", name=None):
            return BasicConv2d(f, k, padding=p, dtype=self.dtype, conv_impl=self.conv_impl,
                               name=name)

        b1 = conv(320, (1, 1), name="branch1x1")(x, train=train)
        b3 = conv(384, (1, 1), name="branch3x3_1")(x, train=train)
        b3 = jnp.concatenate([conv(384, (1, 3), _pad(0, 1), name="branch3x3_2a")(b3, train=train),
                              conv(384, (3, 1), _pad(1, 0), name="branch3x3_2b")(b3, train=train)],
                             axis=-1)
        bd = conv(448, (1, 1), name="branch3x3dbl_1")(x, train=train)
        bd = conv(384, (3, 3), _pad(1, 1), name="branch3x3dbl_2")(bd, train=train)
        bd = jnp.concatenate(
            [conv(384, (1, 3), _pad(0, 1), name="branch3x3dbl_3a")(bd, train=train),
             conv(384, (3, 1), _pad(1, 0), name="branch3x3dbl_3b")(bd, train=train)], axis=-1)
        bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x), train=train)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on Mixed_6e: avg-pool 5/3, 1x1 conv 128, 5x5 conv 768, linear."""

    num_classes: int
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        if x.shape[1] < 5 or x.shape[2] < 5:
            raise ValueError("InceptionV3's aux head needs Mixed_6e maps of at least 5x5 "
                             f"(inputs of about 107x107 or more), got {x.shape[1:3]}")
        x = nn.avg_pool(x, (5, 5), (3, 3), padding="VALID")
        conv = partial(BasicConv2d, dtype=self.dtype, conv_impl=self.conv_impl)
        x = conv(128, (1, 1), name="conv0")(x, train=train)
        x = conv(768, (5, 5), stddev=0.01, name="conv1")(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype,
                        kernel_init=nn.initializers.truncated_normal(0.001), name="fc")(x)


_MIXED = (
    ("Mixed_5b", lambda **kw: InceptionA(32, **kw)),
    ("Mixed_5c", lambda **kw: InceptionA(64, **kw)),
    ("Mixed_5d", lambda **kw: InceptionA(64, **kw)),
    ("Mixed_6a", InceptionB),
    ("Mixed_6b", lambda **kw: InceptionC(128, **kw)),
    ("Mixed_6c", lambda **kw: InceptionC(160, **kw)),
    ("Mixed_6d", lambda **kw: InceptionC(160, **kw)),
    ("Mixed_6e", lambda **kw: InceptionC(192, **kw)),
    ("Mixed_7a", InceptionD), ("Mixed_7b", InceptionE), ("Mixed_7c", InceptionE),
)
_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")


class InceptionV3(nn.Module):
    """Inception-v3 (Szegedy et al. 2016) as in torchvision.

    Attributes:
      num_classes: outputs of the linear head.
      aux_logits: build the auxiliary classifier (``AuxLogits``) on Mixed_6e; its output is
        ``out["aux_logits"]`` (computed in eval mode too, so parameters always exist).
      transform_input: map ImageNet-normalised inputs to the ``(x - 0.5) / 0.5`` scaling the
        original weights expect, as torchvision does for its pretrained model.
      dropout_rate: dropout before the head in training (needs a ``dropout`` RNG when > 0;
        torchvision uses 0.5).
      dtype: computation dtype (parameters stay float32).
      conv_impl: how convolutions are computed (`transfusion_jax.models.conv.CONV_IMPLS`).
    """

    num_classes: int
    aux_logits: bool = False
    transform_input: bool = False
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def block_names(self) -> tuple[str, ...]:
        """Top-level parameter groups in forward order."""
        names = _STEM + tuple(n for n, _ in _MIXED)
        if self.aux_logits:
            i = names.index("Mixed_6e") + 1
            names = names[:i] + ("AuxLogits",) + names[i:]
        return names + ("head",)

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False):
        """Forward pass.

        Args:
          x: images ``(n, h, w, 3)`` with h, w >= 75 (299 is the native size).
          train: use batch statistics (and update the running ones) when True.

        Returns:
          ``(logits, out)``: logits ``(n, num_classes)`` float32; ``out`` maps each block name
          but ``head`` to its output ``(n, h_i, w_i, c_i)``, plus ``pre_logits`` ``(n, 2048)``
          and ``logits`` (and ``aux_logits`` ``(n, num_classes)`` with ``aux_logits=True``).
        """
        if x.shape[1] < 75 or x.shape[2] < 75:
            raise ValueError(f"InceptionV3 needs inputs of at least 75x75, got {x.shape}")
        x = x.astype(self.dtype)
        if self.transform_input:
            x = imagenet_to_inception_range(x, self.dtype)
        out = {}
        specs = ((32, (3, 3), 2, "VALID"), (32, (3, 3), 1, "VALID"), (64, (3, 3), 1, _pad(1, 1)),
                 (80, (1, 1), 1, "VALID"), (192, (3, 3), 1, "VALID"))
        for name, (f, k, s, p) in zip(_STEM, specs, strict=True):
            x = BasicConv2d(f, k, s, p, dtype=self.dtype, conv_impl=self.conv_impl,
                            name=name)(x, train=train)
            out[name] = x
            if name in ("Conv2d_2b_3x3", "Conv2d_4a_3x3"):
                x = _max_pool_3x3_s2(x, self.conv_impl)
        for name, make in _MIXED:
            if name == "Mixed_7a" and self.aux_logits:
                aux = InceptionAux(self.num_classes, self.dtype, self.conv_impl,
                                   name="AuxLogits")(x, train=train)
                out["aux_logits"] = aux.astype(jnp.float32)
            x = make(dtype=self.dtype, conv_impl=self.conv_impl, name=name)(x, train=train)
            out[name] = x
        logits = pooled_head(x, out, num_classes=self.num_classes, dtype=self.dtype,
                             train=train, dropout_rate=self.dropout_rate,
                             kernel_init=nn.initializers.truncated_normal(0.1))
        return logits, out


def make_inception_v3(num_classes: int, *, aux_logits: bool = False,
                      transform_input: bool = False, dropout_rate: float = 0.0,
                      dtype: Any = jnp.float32, conv_impl: str = "auto") -> InceptionV3:
    """Builds `InceptionV3` (``aux_logits=False``: 23,834,568 parameters for 1000 classes)."""
    return InceptionV3(num_classes=num_classes, aux_logits=aux_logits,
                       transform_input=transform_input, dropout_rate=dropout_rate, dtype=dtype,
                       conv_impl=conv_impl)
