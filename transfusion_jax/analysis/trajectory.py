"""A training run's checkpoints as one stacked pytree (a leading checkpoint axis).

`load_trajectory(run_dir)` reads the run's own config from its checkpoint metadata, rebuilds
its model and data, and restores the chosen steps, each into the abstract target of the
run's train state, keeping the model variables (``params`` and ``batch_stats``) stacked as
``(C, ...)`` arrays ready for `jax.vmap`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from transfusion_jax.config import ConfigError
from transfusion_jax.train.checkpoint import Checkpointer, abstract_like
from transfusion_jax.train.setup import RunSetup, abstract_state, build_run


@dataclasses.dataclass
class Trajectory:
    """Checkpoints of one run.

    Attributes:
      config: the run's config (from its checkpoint metadata).
      setup: its model, data and optimizer, rebuilt.
      steps: the restored steps, ascending.
      variables: ``{"params", "batch_stats"}`` with a leading ``(C,)`` axis on every leaf.
    """

    config: ml_collections.ConfigDict
    setup: RunSetup
    steps: list[int]
    variables: dict[str, Any]


def run_config(run_dir: str | Path) -> ml_collections.ConfigDict:
    """The config a run was trained with, read from its newest checkpoint."""
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        raise ConfigError(f"{run_dir} is not a training run's workdir (no checkpoints/ in it)")
    ckpt = Checkpointer(directory)
    try:
        latest = ckpt.latest_step()
        if latest is None:
            raise ConfigError(f"{directory} holds no finished checkpoint")
        return ml_collections.ConfigDict(ckpt.restore_meta(latest)["config"])
    finally:
        ckpt.close()


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """The steps of a run's kept checkpoints, ascending."""
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        raise ConfigError(f"{run_dir} is not a training run's workdir (no checkpoints/ in it)")
    ckpt = Checkpointer(directory)
    try:
        return ckpt.all_steps()
    finally:
        ckpt.close()


def load_trajectory(run_dir: str | Path, steps: Sequence[int] = (),
                    config: ml_collections.ConfigDict | None = None) -> Trajectory:
    """Restores the model variables of ``steps`` (default: every kept checkpoint).

    Args:
      run_dir: the run's workdir.
      steps: checkpoint steps to read; each must exist.
      config: the run's config, if already read (else `run_config`).

    Returns:
      The `Trajectory`, variables stacked in ascending step order.
    """
    config = config or run_config(run_dir)
    setup = build_run(config)
    ckpt = Checkpointer(Path(run_dir) / "checkpoints")
    try:
        available = ckpt.all_steps()
        chosen = sorted(steps) if steps else available
        absent = sorted(set(chosen) - set(available))
        if absent:
            raise ConfigError(f"steps {absent} are not checkpoints of {run_dir}; it has "
                              f"{available}")
        target = abstract_like(abstract_state(config, setup),
                               jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        states = [ckpt.restore(step, target)[0] for step in chosen]
    finally:
        ckpt.close()
    variables = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                             *[s.variables for s in states])
    return Trajectory(config, setup, chosen, variables)
