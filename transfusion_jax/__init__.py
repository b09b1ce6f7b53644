"""transfusion_jax: study what transfer learning transfers, fast, in JAX/Flax.

The Python API (`api`): ``train``, ``sweep``, ``analyze`` and ``similarity_job`` run the
command line's jobs and return their results (`runs.Run`, `api.Study`, dicts of files);
``Run.open(workdir)`` reads a finished run. The similarity engine is
`transfusion_jax.similarity`. Names are imported on first use, so ``import transfusion_jax``
stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"sweep": "api", "analyze": "api", "similarity_job": "api", "Study": "api",
         "Run": "runs"}


def __getattr__(name: str) -> Any:
    if name == "train":  # the subpackage, callable as `api.train`
        return importlib.import_module("transfusion_jax.train")
    if name in _LAZY:
        module = importlib.import_module(f"transfusion_jax.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'transfusion_jax' has no attribute {name!r}")


__all__ = [*_LAZY, "__version__", "train"]
