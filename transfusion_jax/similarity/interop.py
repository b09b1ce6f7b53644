"""Arrays from other libraries: PyTorch tensors become NumPy arrays the engine can read.

PyTorch is never imported here. A ``torch.Tensor`` (recognised by its type's module) is
detached from the autograd graph, moved to the host, upcast to float32 when it holds a half
type (``bfloat16``, ``float16``) that NumPy cannot represent or that loses the precision the
estimators need, and viewed as a NumPy array. Without this, ``np.asarray`` raises torch's own
errors ("Can't call numpy() on Tensor that requires grad", "Got unsupported ScalarType
BFloat16", "can't convert cuda:0 device type tensor to numpy"). NumPy and JAX arrays pass
through unchanged (JAX arrays stay on their device).

Layout is the caller's business: a 4-D torch tensor is logically ``(n, c, h, w)`` (also in
``channels_last`` memory format), see `reductions.reduce_conv`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_HALF = ("torch.bfloat16", "torch.float16", "torch.half")


def is_torch(x: Any) -> bool:
    """True for a ``torch.Tensor`` (without importing torch)."""
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def from_torch(x: Any) -> np.ndarray:
    """A torch tensor as a NumPy array: detached, on the host, half types as float32."""
    x = x.detach()
    if str(x.dtype) in _HALF:
        x = x.float()
    if str(getattr(x, "device", "cpu")) != "cpu":
        x = x.cpu()
    if getattr(x, "is_conj", lambda: False)():  # a lazily conjugated view
        x = x.resolve_conj()
    return x.numpy()


def accept(x: Any) -> Any:
    """`from_torch` for torch tensors; anything else is returned unchanged."""
    return from_torch(x) if is_torch(x) else x


def accept_tree(acts: Any) -> Any:
    """`accept` on one array or on each array of a list/tuple (per-layer activations)."""
    if isinstance(acts, list):
        return [accept(a) for a in acts]
    if isinstance(acts, tuple):
        return tuple(accept(a) for a in acts)
    return accept(acts)


def accept_all(*xs: Any) -> tuple:
    """`accept` on each argument; returns them as a tuple."""
    return tuple(accept(x) for x in xs)
