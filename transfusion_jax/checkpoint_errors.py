"""Errors of reading and writing a run's checkpoints, each naming the step and the fix.

A leaf module: `CheckpointError` and the two messages a user acts on.

- A step that cannot be read (a damaged or truncated data file, a half-copied folder):
  the message names the step and says how to resume from the newest step before it.
- A save that fails for a reason the user fixes (a full disk, a quota, a permission): the
  message names the step being written and the newest complete checkpoint, which stays the
  newest readable one (Orbax writes each step into a temporary folder and renames it only
  once complete).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from etils import epath

from transfusion_jax.os_errors import describe_os_error, os_problem


class CheckpointError(Exception):
    """A checkpoint a user must repair or make room for; the message names step and fix."""


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def restore_failed(directory: str | Path, step: int, steps: Sequence[int],
                   error: BaseException) -> CheckpointError:
    """The error for checkpoint ``step`` of ``directory`` that cannot be read.

    Args:
      directory: the run's ``checkpoints`` folder.
      step: the step that failed.
      steps: every finalised step of the folder (the fix names the one before ``step``).
      error: what the reader raised.
    """
    directory = epath.Path(directory)  # local or gs://
    earlier = [s for s in steps if s < step]
    if earlier:
        fix = (f"to resume from step {earlier[-1]}, the newest step before it, move "
               f"{directory / str(step)} out of the way (and any newer step folder) and re-run "
               "the same command")
    else:
        fix = "no earlier checkpoint exists: start again in a new --workdir"
    return CheckpointError(f"checkpoint step {step} in {directory} cannot be read, it is "
                           f"damaged or incomplete ({_root_cause(error)}); {fix}")


def save_failed(directory: str | Path, step: int | None, latest: int | None,
                error: BaseException) -> CheckpointError | None:
    """The error for a save that failed for a reason the user fixes, else None (a bug).

    Args:
      directory: the run's ``checkpoints`` folder.
      step: the step being written when the failure surfaced (saves are asynchronous).
      latest: the newest complete step on disk, or None.
      error: what Orbax raised.
    """
    problem = os_problem(error)
    if problem is None:
        return None
    kept = (f"the newest complete checkpoint is still step {latest}; re-run the same command "
            "to resume from it" if latest is not None else "no checkpoint was completed")
    what = f"step {step}" if step is not None else "a checkpoint"
    return CheckpointError(f"could not save {what} in {directory}: "
                           f"{describe_os_error(problem)}; {kept}")
