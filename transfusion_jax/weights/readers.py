"""Readers for ``.npz``, ``.safetensors`` and this project's Orbax checkpoints.

``.npz`` and ``.safetensors`` files hold flat ``name -> array`` maps: either torch state-dict
names (``layer1.0.conv1.weight``, converted by a name map) or Flax paths with their collection
(``params/block1/unit0/conv1/kernel``, as `save_npz` writes). Orbax checkpoints are restored
without a target into nested dicts of NumPy arrays.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from transfusion_jax.weights.merge import COLLECTIONS, flatten


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Reads an ``.npz`` archive into ``{name: array}``."""
    path = Path(path)
    _require_file(path)
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file into ``{name: array}`` (NumPy, no torch needed)."""
    from safetensors.numpy import load_file

    path = Path(path)
    _require_file(path)
    return dict(load_file(str(path)))


def save_npz(path: str | Path, variables: Mapping[str, Any]) -> None:
    """Writes Flax variables to ``.npz`` with keys ``<collection>/<module path>/<leaf>``."""
    flat = {k: np.asarray(v) for k, v in flatten(variables).items()}
    np.savez(Path(path), **flat)


def is_flax_flat(flat: Mapping[str, Any]) -> bool:
    """Whether flat keys are Flax paths (``params/...``) rather than torch names."""
    return bool(flat) and all(k.split("/", 1)[0] in COLLECTIONS for k in flat)


def _step_of(path: Path) -> int | None:
    m = re.fullmatch(r"(?:\w+_)?(\d+)", path.name)
    return int(m.group(1)) if m and path.is_dir() else None


def _restore(path: Path) -> Any:
    """Restores every leaf as a NumPy array, so a checkpoint saved sharded over other devices
    (another mesh, another host count) still reads here."""
    import orbax.checkpoint as ocp
    from absl import logging as absl_logging

    # An item folder of a CheckpointManager step has no step-level metadata of its own, which
    # Orbax reports as a warning on every read; it is expected here.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        return _restore_numpy(ocp, path)
    finally:
        absl_logging.set_verbosity(verbosity)


def _restore_numpy(ocp: Any, path: Path) -> Any:
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path.absolute())
        tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = checkpointer.restore(
            path.absolute(), args=ocp.args.PyTreeRestore(restore_args=restore_args))
    return jax.tree.map(np.asarray, restored)


def _find_with_params(tree: Any) -> Mapping[str, Any] | None:
    """The first mapping (breadth first) holding a ``params`` key."""
    queue = [tree]
    while queue:
        node = queue.pop(0)
        if isinstance(node, Mapping):
            if "params" in node and isinstance(node["params"], Mapping):
                return node
            queue.extend(v for v in node.values() if isinstance(v, Mapping))
    return None


def read_orbax_variables(path: str | Path) -> dict[str, Any]:
    """Restores model variables from an Orbax checkpoint, without a target.

    ``path`` may be a checkpoint written by a ``Checkpointer`` (a folder with ``_METADATA``),
    a ``CheckpointManager`` step folder (its items are tried in name order) or the manager's
    root folder (the highest numbered step is used). The restored tree must hold a ``params``
    mapping at some depth (a train state's ``params`` field does).

    Args:
      path: checkpoint folder.

    Returns:
      ``{"params": nested dict, "batch_stats": nested dict}`` of NumPy arrays
      (``batch_stats`` only when the checkpoint has them).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Orbax checkpoint folder not found: {path}")
    steps = [p for p in path.iterdir() if _step_of(p) is not None]
    if steps and not (path / "_METADATA").is_file():
        return read_orbax_variables(max(steps, key=_step_of))
    candidates = [path] if (path / "_METADATA").is_file() else sorted(
        p for p in path.iterdir() if p.is_dir() and (p / "_METADATA").is_file())
    for candidate in candidates:
        found = _find_with_params(_restore(candidate))
        if found is not None:
            return {k: dict(found[k]) for k in COLLECTIONS if isinstance(found.get(k), Mapping)}
    raise ValueError(f"{path}: no Orbax checkpoint with a 'params' entry found there "
                     "(pass a checkpoint folder, a step folder or a CheckpointManager folder)")


def read_orbax_params(path: str | Path) -> dict[str, Any]:
    """The ``params`` tree of an Orbax checkpoint (see `read_orbax_variables`)."""
    return read_orbax_variables(path)["params"]
