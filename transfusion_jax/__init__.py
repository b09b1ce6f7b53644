"""transfusion_jax: study what transfer learning transfers, fast, in JAX/Flax.

The Python API (`api`): ``train``, ``sweep``, ``analyze`` and ``similarity_job`` run the
command line's jobs and return their results (`runs.Run`, `api.Study`, dicts of files);
``Run.open(workdir)`` reads a finished run; ``compare(model_a, model_b, batches, layers)``
compares two models' layers (Flax or PyTorch). The similarity engine is
`transfusion_jax.similarity`. Names are imported on first use, so ``import transfusion_jax``
stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"sweep": "api", "analyze": "api", "similarity_job": "api", "Study": "api",
         "Run": "runs"}
# Subpackages that are also callable: ``train(...)`` is `api.train`, ``compare(...)`` is
# `compare.compare`.
_CALLABLE_PACKAGES = ("train", "compare")


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_PACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_LAZY, *_CALLABLE_PACKAGES, "__version__"]
