"""Merging loaded weights into a model's variables, with one error listing every mismatch.

Paths are ``/``-joined module names inside a collection (``block1/unit0/conv1/kernel``);
``dont_load`` regexes are matched (``re.search``) against them, so ``'^head/'`` keeps the
model's own head in every collection, e.g. for a different number of classes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

COLLECTIONS = ("params", "batch_stats")


class WeightMismatchError(ValueError):
    """Loaded weights do not fit the model; the message lists every offending path."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}``."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b": x}`` -> ``{"a": {"b": x}}``."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _is_variables(tree: Mapping[str, Any]) -> bool:
    return bool(tree) and all(k in COLLECTIONS for k in tree)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def merge_params(template: Mapping[str, Any], loaded: Mapping[str, Any], *,
                 dont_load: Iterable[str] = ()) -> dict[str, Any]:
    """Takes every leaf of ``template`` from ``loaded``, checking names and shapes.

    Args:
      template: the model's variables ``{"params": ..., "batch_stats": ...}`` (from
        ``model.init``), or a bare parameter tree. Its values are kept for skipped paths.
      loaded: variables of the same layout read from a file (NumPy or JAX arrays).
      dont_load: regexes; a path (inside its collection) matching one keeps the template's
        value, and a loaded path matching one is ignored.

    Returns:
      variables shaped as ``template``, with loaded values cast to the template's dtypes.

    Raises:
      WeightMismatchError: listing every missing (in the model, not in the file), unexpected
        (in the file, not in the model) and wrongly shaped parameter, all at once.
    """
    patterns = [re.compile(p) for p in dont_load]
    both_variables = _is_variables(template)
    tmpl = template if both_variables else {"params": template}
    if both_variables:
        loaded = loaded if _is_variables(loaded) else {"params": loaded}
    else:
        loaded = {"params": loaded["params"] if _is_variables(loaded) else loaded}
    missing, unexpected, wrong, abstract_kept = [], [], [], []
    merged: dict[str, Any] = {}
    for collection in sorted(set(tmpl) | set(loaded)):
        t_flat = flatten(tmpl.get(collection, {}))
        l_flat = flatten(loaded.get(collection, {}))
        out = {}
        for path, t_value in t_flat.items():
            name = f"{collection}/{path}"
            if any(p.search(path) for p in patterns):
                if isinstance(t_value, jax.ShapeDtypeStruct):
                    abstract_kept.append(name)
                out[path] = t_value
            elif path not in l_flat:
                missing.append(f"{name} {_shape(t_value)}")
            elif _shape(l_flat[path]) != _shape(t_value):
                wrong.append(f"{name}: model {_shape(t_value)}, file {_shape(l_flat[path])}")
            else:
                out[path] = jnp.asarray(l_flat[path], dtype=t_value.dtype)
        for path in l_flat:
            if path not in t_flat and not any(p.search(path) for p in patterns):
                unexpected.append(f"{collection}/{path} {_shape(l_flat[path])}")
        if collection in tmpl:
            merged[collection] = unflatten(out)
    if missing or unexpected or wrong or abstract_kept:
        raise WeightMismatchError(_message(missing, unexpected, wrong, abstract_kept))
    return merged if both_variables else merged["params"]


def _message(missing: list[str], unexpected: list[str], wrong: list[str],
             abstract_kept: list[str]) -> str:
    total = len(missing) + len(unexpected) + len(wrong) + len(abstract_kept)
    lines = [f"weights do not match the model ({total} problem{'s' if total != 1 else ''}):"]
    for title, items in (("missing (in the model, not in the file)", missing),
                         ("unexpected (in the file, not in the model)", unexpected),
                         ("wrong shape", wrong),
                         ("skipped by dont_load but the template is abstract (pass concrete "
                          "variables from model.init)", abstract_kept)):
        if items:
            lines.append(f"  {title}: {len(items)}")
            lines.extend(f"    {item}" for item in items)
    tops = sorted({item.split("/")[1] for item in missing + wrong})
    if tops:
        hint = ", ".join(repr(f"^{t}/") for t in tops)
        lines.append(f"To keep the model's own values for these, pass dont_load=({hint},); "
                     "check that the file is for this model otherwise.")
    return "\n".join(lines)
