"""The PyTorch side of `train_throughput.py`: the same networks and the same training step.

Networks: the CBR family built here layer for layer like `transfusion_jax.models.cbr`
(TensorFlow-style "SAME" max-pool padding included), torchvision's ResNets and Inception-v3
(which the project's models reproduce name for name). The step is what a PyTorch user
writes: forward in train mode, cross-entropy, backward, SGD with momentum 0.9 and weight
decay, channels-last memory format; on a GPU, bfloat16 autocast. ``compiled=True`` wraps the
model in ``torch.compile`` (inductor).

Needs the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _SamePool(nn.Module):
    """Max-pool 3x3 / 2 with TensorFlow / Flax "SAME" padding (extra row and column at the
    end, padded with -inf), as `transfusion_jax.models.cbr` pools."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[3], x.shape[2]):  # F.pad takes the last dimension first
            total = max((math.ceil(size / 2) - 1) * 2 + 3 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(x, pads, value=-math.inf), 3, 2)


def cbr(num_classes: int, in_channels: int, kernel: int, channels: tuple[int, ...],
        pool_after: tuple[bool, ...]) -> nn.Module:
    """The CBR network of `transfusion_jax.models.cbr` (channels already width-scaled)."""
    layers: list[nn.Module] = []
    for c, pool in zip(channels, pool_after, strict=True):
        layers += [nn.Conv2d(in_channels, c, kernel, padding=kernel // 2, bias=False),
                   nn.BatchNorm2d(c, eps=1e-5, momentum=0.1), nn.ReLU(inplace=True)]
        if pool:
            layers.append(_SamePool())
        in_channels = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes)]
    return nn.Sequential(*layers)


def build(name: str, num_classes: int, in_channels: int, options: dict[str, Any]) -> nn.Module:
    """The PyTorch network equivalent to ``transfusion_jax.models.MODELS[name]``."""
    import torchvision

    if name.startswith("cbr_"):
        from transfusion_jax.models.cbr import CBR_SPECS

        kernel, channels, pools = CBR_SPECS[name]
        width = options.get("width", 1.0)
        return cbr(num_classes, in_channels, kernel,
                   tuple(max(1, round(c * width)) for c in channels), pools)
    if name in ("resnet18", "resnet34", "resnet50"):
        return getattr(torchvision.models, name)(num_classes=num_classes)
    if name == "inception_v3":
        return torchvision.models.inception_v3(num_classes=num_classes, aux_logits=False,
                                               init_weights=False)
    raise ValueError(f"no PyTorch baseline for model {name!r}")


def make_step(name: str, num_classes: int, options: dict[str, Any], images: np.ndarray,
              labels: np.ndarray, *, device: str, bfloat16: bool, compiled: bool,
              lr: float = 0.05, weight_decay: float = 5e-4) -> Callable[[], torch.Tensor]:
    """One training step on a fixed batch, as a zero-argument callable returning the loss.

    Args:
      images: ``(b, h, w, c)`` float32, the batch the JAX side trains on (NHWC).
      labels: ``(b,)`` int.
      device: ``"cpu"`` or ``"cuda"``.
      bfloat16: autocast the forward pass to bfloat16 (parameters stay float32).
      compiled: ``torch.compile`` the model.
    """
    torch.manual_seed(0)
    model = build(name, num_classes, images.shape[-1], options).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(np.asarray(labels, np.int64)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    forward = torch.compile(model) if compiled else model

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bfloat16):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def sync(device: str) -> Callable[[Any], None]:
    """Blocks until the device has finished (a no-op on CPU, where PyTorch is synchronous)."""
    if device == "cuda":
        return lambda _: torch.cuda.synchronize()
    return lambda _: None
