"""Subpackages that can also be called: ``transfusion_jax.train(...)``, ``.compare(...)``.

A function and a subpackage cannot share a name in a package (importing the subpackage
rebinds the name), so the subpackage itself is made callable: its module object gets a class
whose ``__call__`` forwards to the function. A leaf: imports nothing of the project.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


def make_callable(package: str, target: str) -> None:
    """Makes module ``package`` callable as ``module.function`` named by ``target``
    (``"transfusion_jax.api:train"``), imported on the first call."""
    module_name, _, function = target.partition(":")

    class CallablePackage(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module(module_name), function)(*args, **kwargs)

    CallablePackage.__call__.__doc__ = f"Calls `{module_name}.{function}`."
    sys.modules[package].__class__ = CallablePackage
