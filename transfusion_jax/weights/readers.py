"""Readers for ``.npz`` and ``.safetensors`` weight files (Orbax ones: `checkpoints`).

``.npz`` and ``.safetensors`` files hold flat ``name -> array`` maps: either torch state-dict
names (``layer1.0.conv1.weight``, converted by a name map) or Flax paths with their collection
(``params/block1/unit0/conv1/kernel``, as `save_npz` writes). Orbax checkpoints are read by
`transfusion_jax.checkpoints.read_orbax_variables`, the project's one checkpoint reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from transfusion_jax.checkpoints import read_orbax_variables
from transfusion_jax.paths import to_path
from transfusion_jax.weights.merge import COLLECTIONS, flatten


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Reads an ``.npz`` archive into ``{name: array}``."""
    path = to_path(path)  # local or gs://
    _require_file(path)
    with path.open("rb") as f, np.load(f, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file into ``{name: array}`` (NumPy, no torch needed)."""
    from safetensors.numpy import load

    path = to_path(path)  # local or gs://
    _require_file(path)
    return dict(load(path.read_bytes()))


def save_npz(path: str | Path, variables: Mapping[str, Any]) -> None:
    """Writes Flax variables to ``.npz`` with keys ``<collection>/<module path>/<leaf>``."""
    flat = {k: np.asarray(v) for k, v in flatten(variables).items()}
    with to_path(path).open("wb") as f:
        np.savez(f, **flat)


def is_flax_flat(flat: Mapping[str, Any]) -> bool:
    """Whether flat keys are Flax paths (``params/...``) rather than torch names."""
    return bool(flat) and all(k.split("/", 1)[0] in COLLECTIONS for k in flat)


def read_orbax_params(path: str | Path) -> dict[str, Any]:
    """The ``params`` tree of an Orbax checkpoint (see `read_orbax_variables`)."""
    return read_orbax_variables(path)["params"]
