"""Reading what a run saved, without touching it: its finalised steps and their metadata.

Used before anything is written (to check a resume, or a run named as an init source), so
it opens the run's ``checkpoints/`` folder read-only: no folder is created and no temporary
folder of a run still training is cleaned up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from transfusion_jax.checkpoint_errors import restore_failed

CHECKPOINTS = "checkpoints"


@contextlib.contextmanager
def _read_only(directory: Path) -> Iterator[ocp.CheckpointManager]:
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # "directory is read only": as intended
    options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                           save_interval_steps=0)
    manager = ocp.CheckpointManager(directory, options=options,
                                    item_names=("state", "data", "meta"))
    try:
        yield manager
    finally:
        manager.close()
        absl_logging.set_verbosity(verbosity)


def saved_steps(run_dir: str | Path) -> list[int]:
    """The finalised checkpoint steps of the run in ``run_dir``, ascending ([] if none)."""
    directory = Path(run_dir) / CHECKPOINTS
    if not directory.is_dir():
        return []
    with _read_only(directory) as manager:
        return sorted(manager.all_steps())


def saved_meta(run_dir: str | Path, step: int) -> dict[str, Any]:
    """The metadata saved with ``step`` (``config``, ``step``, ``convergence``, ...).

    Raises:
      CheckpointError: the step's metadata cannot be read (a damaged checkpoint).
    """
    directory = Path(run_dir) / CHECKPOINTS
    with _read_only(directory) as manager:
        try:
            return manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise restore_failed(directory, step, sorted(manager.all_steps()), e) from e
