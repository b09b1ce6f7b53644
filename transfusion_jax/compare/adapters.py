"""Models `compare` can read activations from: Flax modules, plain callables, PyTorch modules.

An adapter opens a *session* for chosen layers and a conv reduction; the session is a function
``forward(input) -> [(m, d_l) representation per layer]`` (see `inputs.representation`),
valid until the session closes (the PyTorch adapter removes its hooks then). `as_adapter`
picks the adapter for a model given to `compare`:

* `FlaxModel` (or a tuple ``(module, variables)``): ``logits, out = module.apply(variables,
  x, train=False)``, the project's model contract, reads the named intermediates ``out``; a
  layer name that is not an ``out`` key is read from Flax's ``capture_intermediates`` by its
  module path (``"block1/conv"``), so any Flax module works. One jitted forward per input
  shape.
* `CallableModel` (or any callable): ``f(input) -> {name: array}``, NumPy or JAX arrays.
* `transfusion_jax.compare.torch_adapter.TorchModel` (or any ``torch.nn.Module``).
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.compare import inputs
from transfusion_jax.compare.inputs import CompareError, ForwardFn


class Adapter(abc.ABC):
    """A model `compare` can run: gives the input of a batch and per-layer representations.

    Attributes:
      get_input: ``batch -> model input``; ``None`` applies `inputs.default_input` (the
        ``"image"`` entry of a dict, the first element of a tuple, else the batch).
    """

    get_input: Callable[[Any], Any] | None = None

    def input_of(self, batch: Any) -> Any:
        """The model input of one batch of the iterator."""
        return self.get_input(batch) if self.get_input is not None else inputs.default_input(
            batch)

    @abc.abstractmethod
    def session(self, layers: Sequence[str], reduction: str,
                role: str) -> contextlib.AbstractContextManager[ForwardFn]:
        """A context yielding ``forward(input) -> [(m, d) per layer of `layers`]``.

        Args:
          layers: layer names of this model, in output order.
          reduction: conv-map reduction (``similarity.REDUCTIONS``).
          role: how errors name this model (``"model A"``).

        Raises:
          CompareError: an unknown layer name (listing the valid ones), at the latest on the
            first forward.
        """


class CallableModel(Adapter):
    """Any function ``f(input) -> {layer name: activations}``.

    Args:
      fn: returns a dict of NumPy or JAX arrays, ``(n, d)`` or conv maps.
      layout: axis order of 4-D maps, ``'nhwc'`` (default) or ``'nchw'``.
      get_input: ``batch -> input`` (default: `inputs.default_input`).
    """

    def __init__(self, fn: Callable[[Any], Mapping[str, Any]], *, layout: str = "nhwc",
                 get_input: Callable[[Any], Any] | None = None):
        inputs.check_layout(layout)
        self.fn, self.layout, self.get_input = fn, layout, get_input

    @contextlib.contextmanager
    def session(self, layers: Sequence[str], reduction: str, role: str) -> Iterator[ForwardFn]:
        def forward(x):
            out = self.fn(x)
            if not isinstance(out, Mapping):
                raise CompareError(f"{role}: the callable returned {type(out).__name__}; it must "
                                   "return a dict {layer name: activations}.")
            inputs.check_layers(layers, list(out), role, "keys the callable returned")
            return [inputs.representation(out[n], n, reduction, self.layout) for n in layers]

        yield forward


def _captured(tree: Mapping, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """``(module path, output)`` of every submodule called once with an array output, from
    Flax's ``intermediates`` collection (``{..., "__call__": (output,)}``)."""
    for key, value in tree.items():
        if key == "__call__":
            if prefix and len(value) == 1 and hasattr(value[0], "shape"):
                yield "/".join(prefix), value[0]
        elif isinstance(value, Mapping):
            yield from _captured(value, (*prefix, key))


def _default_apply_kwargs(module) -> dict[str, Any]:
    """``{"train": False}`` when the module's ``__call__`` takes ``train`` (the project's
    models do), else nothing."""
    params = inspect.signature(type(module).__call__).parameters
    return {"train": False} if "train" in params else {}


class FlaxModel(Adapter):
    """A Flax ``linen.Module`` with its variables.

    Layers are read from the ``out`` dict of the project's contract ``logits, out =
    module.apply(variables, x, train=False)``; any other name is a module path read through
    ``capture_intermediates`` (``"block1/conv"``: the output of that submodule's
    ``__call__``), so modules outside the project work too. The forward is jitted once per
    model, layers and reduction; a last batch shorter than the first is padded to the first
    one's size (and its padding rows dropped) rather than compiled again.

    Args:
      module: the Flax module.
      variables: its variables (``{"params": ..., "batch_stats": ...}``).
      apply_kwargs: extra keyword arguments of ``apply`` (hashable values: they are static
        in the jitted forward); default ``{"train": False}`` when ``__call__`` takes
        ``train``, else none.
      get_input: ``batch -> input`` (default: `inputs.default_input`).
    """

    def __init__(self, module, variables, *, apply_kwargs: Mapping[str, Any] | None = None,
                 get_input: Callable[[Any], Any] | None = None):
        self.module, self.variables, self.get_input = module, variables, get_input
        self.apply_kwargs = (_default_apply_kwargs(module) if apply_kwargs is None
                             else dict(apply_kwargs))

    def _check(self, x, layers: Sequence[str], role: str) -> bool:
        """Validates `layers` on an input like `x`; True when some need capture."""
        kwargs = tuple(sorted(self.apply_kwargs.items()))
        out, _ = jax.eval_shape(partial(_flax_apply, module=self.module, capture=False,
                                        kwargs=kwargs), self.variables, x)
        missing = [n for n in layers if n not in out]
        if not missing:
            return False
        _, captured = jax.eval_shape(partial(_flax_apply, module=self.module, capture=True,
                                             kwargs=kwargs), self.variables, x)
        what = ("the model's `out` keys, then module paths" if out else "module paths")
        inputs.check_layers(layers, list(out) + list(captured), role, what)
        return True

    @contextlib.contextmanager
    def session(self, layers: Sequence[str], reduction: str, role: str) -> Iterator[ForwardFn]:
        options: dict[str, Any] = {}
        first_size: list[int] = []

        def forward(x):
            x = x if isinstance(x, jax.Array) else jax.tree.map(np.asarray, x)
            n = inputs.num_examples(x)
            if not options:
                options.update(module=self.module, layers=tuple(layers), reduction=reduction,
                               capture=self._check(x, layers, role),
                               kwargs=tuple(sorted(self.apply_kwargs.items())))
                first_size.append(n)
            size = first_size[0]
            if n >= size:
                return _flax_forward(self.variables, x, **options)
            # A short (last) batch is padded to the first batch's size, so the model is not
            # compiled again; eval-mode examples are independent, the padding changes nothing.
            pad = lambda a: (np.pad if isinstance(a, np.ndarray) else jnp.pad)(
                a, [(0, size - n)] + [(0, 0)] * (a.ndim - 1))
            reps = _flax_forward(self.variables, jax.tree.map(pad, x), **options)
            return [r[: r.shape[0] // size * n] for r in reps]

        yield forward


def _flax_apply(variables, x, *, module, capture: bool, kwargs: tuple):
    """``(out dict or {}, {module path: output})`` of one forward."""
    if capture:
        y, state = module.apply(variables, x, capture_intermediates=True,
                                mutable=["intermediates"], **dict(kwargs))
        captured = dict(_captured(state["intermediates"]))
    else:
        y, captured = module.apply(variables, x, **dict(kwargs)), {}
    contract = isinstance(y, tuple) and len(y) == 2 and isinstance(y[1], Mapping)
    return (dict(y[1]) if contract else {}), captured


@partial(jax.jit, static_argnames=("module", "layers", "reduction", "capture", "kwargs"))
def _flax_forward(variables, x, *, module, layers: tuple[str, ...], reduction: str,
                  capture: bool, kwargs: tuple) -> list[jax.Array]:
    """The chosen layers' ``(m, d)`` representations of one batch (one compiled program per
    model, layers, reduction and input shape, reused across `compare` calls)."""
    out, captured = _flax_apply(variables, x, module=module, capture=capture, kwargs=kwargs)
    return [inputs.representation(out[n] if n in out else captured[n], n, reduction)
            for n in layers]


def _is_flax_module(obj: Any) -> bool:
    linen = sys.modules.get("flax.linen")
    return linen is not None and isinstance(obj, linen.Module)


def _is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def as_adapter(model: Any, role: str) -> Adapter:
    """The adapter of a model given to `compare`.

    Accepts an `Adapter`, a ``torch.nn.Module`` (`torch_adapter.TorchModel`), a tuple
    ``(flax module, variables)`` (`FlaxModel`), or a callable (`CallableModel`).

    Raises:
      CompareError: a Flax module without variables, or something that is none of these.
    """
    if isinstance(model, Adapter):
        return model
    if _is_torch_module(model):
        from transfusion_jax.compare.torch_adapter import TorchModel

        return TorchModel(model)
    if isinstance(model, tuple) and len(model) == 2 and _is_flax_module(model[0]):
        return FlaxModel(*model)
    if _is_flax_module(model):
        raise CompareError(f"{role} is a Flax module without its variables; pass "
                           "(module, variables) or FlaxModel(module, variables).")
    if callable(model):
        return CallableModel(model)
    raise CompareError(
        f"{role} is a {type(model).__name__}; give a (flax module, variables) tuple, a "
        "torch.nn.Module, a callable returning {layer name: activations}, or an adapter."
    )
