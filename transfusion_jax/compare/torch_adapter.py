"""PyTorch models for `compare`: forward hooks on named submodules (torch is an optional extra,
``pip install 'transfusion_jax[torch]'``; this module imports it when a session opens).

Per batch the model runs once in eval mode under ``torch.no_grad()``; a hook on each chosen
module (``dict(model.named_modules())[name]``) detaches its output, upcasts
bfloat16/float16 to float32, reduces channels-first conv maps ``(n, c, h, w)`` (``mean_pool``
on the model's device, so only ``(n, c)`` leaves it; the flatten reductions in channels-last
order, as for the Flax models) and moves the result to the host. The hooks are removed and
the model's train/eval mode restored when the session closes, also on error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from transfusion_jax.compare import inputs
from transfusion_jax.compare.adapters import Adapter
from transfusion_jax.compare.inputs import CompareError, ForwardFn


def _to_host(t, reduction: str, layout: str) -> np.ndarray:
    """A hooked output -> float32 NumPy, conv maps channels-last (or mean-pooled)."""
    import torch

    t = t.detach()
    if t.dtype != torch.float64:
        t = t.to(torch.float32)
    if t.ndim == 4 and layout == "nchw":
        t = t.mean(dim=(2, 3)) if reduction == "mean_pool" else t.permute(0, 2, 3, 1)
    return t.cpu().numpy()


class TorchModel(Adapter):
    """A ``torch.nn.Module`` read through forward hooks on its named submodules.

    Layer names are the module's ``named_modules()`` names (``"layer1"``, ``"layer4.1.conv2"``).
    NumPy or JAX batch inputs become tensors; floating inputs are moved to the device and dtype
    of the model's first parameter (so a bfloat16 model gets bfloat16 input).

    Args:
      module: the model (its train/eval mode is restored after the comparison).
      layout: axis order of its 4-D outputs, ``'nchw'`` (default) or ``'nhwc'``.
      get_input: ``batch -> input`` (default: `inputs.default_input`).
    """

    def __init__(self, module, *, layout: str = "nchw",
                 get_input: Callable[[Any], Any] | None = None):
        inputs.check_layout(layout)
        self.module, self.layout, self.get_input = module, layout, get_input

    def _tensor(self, x):
        import torch

        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(np.array(x))
        param = next(self.module.parameters(), None)
        if param is None:
            return x
        return x.to(device=param.device, dtype=param.dtype if x.is_floating_point() else None)

    @contextlib.contextmanager
    def session(self, layers: Sequence[str], reduction: str, role: str) -> Iterator[ForwardFn]:
        import torch

        modules = dict(self.module.named_modules())
        inputs.check_layers(layers, [n for n in modules if n], role, "named_modules()")
        captured: dict[str, list[np.ndarray]] = {}

        def hook(name):
            def save(module, args, output):
                if not isinstance(output, torch.Tensor):
                    raise CompareError(f"{role}: module {name!r} returned "
                                       f"{type(output).__name__}, not a tensor; hook a module "
                                       "that returns one.")
                captured.setdefault(name, []).append(_to_host(output, reduction, self.layout))
            return save

        handles = []
        was_training = self.module.training
        try:
            for name in dict.fromkeys(layers):
                handles.append(modules[name].register_forward_hook(hook(name)))
            self.module.eval()

            def forward(x):
                captured.clear()
                with torch.no_grad():
                    self.module(self._tensor(x))
                for name in layers:
                    if len(captured.get(name, ())) != 1:
                        raise CompareError(
                            f"{role}: module {name!r} ran {len(captured.get(name, ()))} times "
                            "in one forward pass; compare needs exactly one output per layer."
                        )
                return [inputs.representation(captured[n][0], n, reduction, "nhwc")
                        for n in layers]

            yield forward
        finally:
            for handle in handles:
                handle.remove()
            self.module.train(was_training)
