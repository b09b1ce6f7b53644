"""The command line's error boundary: every failure a user can cause is one ``error:`` line.

`guarded` runs a piece of the command line (flag parsing, a job) and turns each failure a
user can cause and fix into one line on stderr, ``error: <what> <the fix>``, with exit
status 1:

- the project's user errors: `ConfigError` (a config key, value, file or workdir),
  `DataError` (a dataset, split or image folder), `WeightMismatchError` (a weight file that
  does not fit the model; its message lists every mismatch, one per line below the error
  line), `CheckpointError` (a damaged checkpoint, a failed save), `NonFiniteLossError`,
  `SimilarityInputError`, `AcceleratorError` (no GPU or TPU where one was expected), and
  absl's flag errors;
- operating-system errors a user fixes outside the program (found anywhere in the
  exception's cause chain, since Orbax and tensorstore wrap them): a full disk or quota, no
  permission, a read-only file system, a path through a file.

Anything else is a bug: it keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from transfusion_jax.os_errors import describe_os_error, os_problem


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes whose message is already the one line a user needs."""
    from absl import flags

    from transfusion_jax.accelerator import AcceleratorError
    from transfusion_jax.checkpoint_errors import CheckpointError
    from transfusion_jax.config import ConfigError
    from transfusion_jax.data import DataError
    from transfusion_jax.similarity import SimilarityInputError
    from transfusion_jax.train.loop import NonFiniteLossError
    from transfusion_jax.weights import WeightMismatchError

    return (ConfigError, DataError, NonFiniteLossError, WeightMismatchError,
            SimilarityInputError, CheckpointError, AcceleratorError, flags.Error)


def one_line(error: BaseException) -> str | None:
    """The ``error:`` text for a failure a user can fix, or None for a bug."""
    if isinstance(error, user_error_types()):
        from transfusion_jax.weights import WeightMismatchError

        if isinstance(error, WeightMismatchError):
            return str(error)  # the list below the error line is the point of this error
        return " ".join(str(error).split())
    problem = os_problem(error)
    if problem is not None:
        return describe_os_error(problem)
    return None


def _ignore(_report: Any) -> None:
    """An unraisable-exception hook that drops the report."""


def guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """Runs ``fn(*args, **kwargs)``; a user's failure becomes one ``error:`` line on stderr.

    While ``fn`` runs, "Exception ignored in ..." reports (Orbax's asyncio callbacks firing
    after a failed restore closed their loop) are held: shown if ``fn`` succeeds or fails
    with a bug, dropped with a user's failure, as is everything such threads report until
    the process ends.

    Returns:
      ``(0, fn's result)``, or ``(1, None)`` after printing the error line.

    Raises:
      Whatever ``fn`` raises that is not a user's failure (a bug keeps its traceback).
    """
    previous, held = sys.unraisablehook, []
    sys.unraisablehook = held.append
    try:
        result = fn(*args, **kwargs)
    except Exception as e:
        message = one_line(e)
        if message is None:
            sys.unraisablehook = previous
            for report in held:
                previous(report)
            raise
        sys.unraisablehook = _ignore
        logging.getLogger("absl").setLevel(logging.CRITICAL + 1)
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 1, None
    sys.unraisablehook = previous
    for report in held:
        previous(report)
    return 0, result


class _ReportedOSErrors(logging.Filter):
    """Drops library log records carrying an OS error a user fixes: `guarded` reports it."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or os_problem(error) is None


def quiet_reported_library_errors() -> None:
    """Keeps Orbax's logged tracebacks of a full disk (and the like) off stderr; the error
    line names it. Idempotent."""
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _ReportedOSErrors) for f in absl_logger.filters):
        absl_logger.addFilter(_ReportedOSErrors())
