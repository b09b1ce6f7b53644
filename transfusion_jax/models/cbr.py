"""The CBR family of Raghu et al. 2019 (Transfusion): conv -> BatchNorm -> ReLU blocks.

Each block is a stride-1 ``k x k`` convolution, BatchNorm and ReLU, optionally followed by a
3x3 max-pool of stride 2; then global average pooling and a linear head. The paper's four
sizes are in `CBR_SPECS`. ``width`` scales every channel count (a slim variant for CPU runs).

Parameters are grouped one top-level collection per block (``block1``, ..., ``head``) so an
initializer can copy a prefix of blocks by name (`CBR.block_names`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from transfusion_jax.models.conv import Conv
from transfusion_jax.models.head import pooled_head
from transfusion_jax.models.pool import max_pool

# name -> (kernel size, channels per block, max-pool after block?)
CBR_SPECS: dict[str, tuple[int, tuple[int, ...], tuple[bool, ...]]] = {
    "cbr_large_tall": (7, (32, 64, 128, 256, 512), (True, True, True, True, False)),
    "cbr_large_wide": (7, (64, 128, 256, 512), (True, True, True, True)),
    "cbr_small": (7, (32, 64, 128, 256), (True, True, True, True)),
    # CBR-Tiny's channels are unconfirmed (some read 32-64-128-256): override `channels`.
    "cbr_tiny": (5, (64, 128, 256, 512), (True, True, True, True)),
}


class CBRBlock(nn.Module):
    """conv(k x k, stride 1) -> BatchNorm -> ReLU [-> max-pool 3x3 stride 2]."""

    features: int
    kernel: int
    pool: bool
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = Conv(self.features, (self.kernel, self.kernel), padding="SAME", use_bias=False,
                 dtype=self.dtype, impl=self.conv_impl, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=self.dtype, name="bn")(x)
        x = nn.relu(x)
        if self.pool:
            x = max_pool(x, (3, 3), (2, 2), "SAME", impl=self.conv_impl)
        return x


class CBR(nn.Module):
    """A CBR network.

    Attributes:
      num_classes: outputs of the linear head.
      kernel: convolution kernel size.
      channels: output channels of each block (before ``width`` scaling).
      pool_after: whether each block ends with a max-pool.
      width: multiplier on every channel count (rounded, at least 1).
      dtype: computation dtype (parameters stay float32).
      conv_impl: how convolutions are computed (`transfusion_jax.models.conv.CONV_IMPLS`).
    """

    num_classes: int
    kernel: int
    channels: Sequence[int]
    pool_after: Sequence[bool]
    width: float = 1.0
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def block_names(self) -> tuple[str, ...]:
        """Top-level parameter groups in forward order (the transfusion prefix order)."""
        return tuple(f"block{i + 1}" for i in range(len(self.channels))) + ("head",)

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False):
        """Forward pass.

        Args:
          x: images ``(n, h, w, c)``, float.
          train: use batch statistics (and update the running ones) when True.

        Returns:
          ``(logits, out)``: logits ``(n, num_classes)`` float32 and a dict of intermediates
          ``block1..blockN`` ``(n, h_i, w_i, c_i)``, ``pre_logits`` ``(n, c_N)``, ``logits``.
        """
        if len(self.channels) != len(self.pool_after):
            raise ValueError(
                f"CBR needs one pool flag per block: got {len(self.channels)} channels and "
                f"{len(self.pool_after)} pool flags."
            )
        out = {}
        x = x.astype(self.dtype)
        for i, (c, pool) in enumerate(zip(self.channels, self.pool_after, strict=True)):
            name = f"block{i + 1}"
            x = CBRBlock(max(1, round(c * self.width)), self.kernel, pool, self.dtype,
                         self.conv_impl, name=name)(x, train=train)
            out[name] = x
        logits = pooled_head(x, out, num_classes=self.num_classes, dtype=self.dtype)
        return logits, out


def make_cbr(name: str):
    """A constructor ``(num_classes, **options) -> CBR`` for one of `CBR_SPECS`."""
    kernel, channels, pools = CBR_SPECS[name]

    def build(num_classes: int, *, kernel: int = kernel, channels: Sequence[int] = channels,
              pool_after: Sequence[bool] | None = None, width: float = 1.0,
              dtype: Any = jnp.float32, conv_impl: str = "auto") -> CBR:
        pool_after = tuple(pool_after) if pool_after is not None else pools[: len(channels)]
        return CBR(num_classes=num_classes, kernel=kernel, channels=tuple(channels),
                   pool_after=tuple(pool_after), width=width, dtype=dtype, conv_impl=conv_impl)

    build.__name__ = f"make_{name}"
    return build
