"""transfusion_jax: study what transfer learning transfers, fast, in JAX/Flax."""

import importlib

__version__ = "0.1.0"

# Subpackages reachable as attributes after a bare ``import transfusion_jax``, imported on
# first use so the bare import stays instant.
_LAZY = ("compare",)


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
