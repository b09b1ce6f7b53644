"""User paths, local or remote (``gs://``), as `etils.epath.Path` (one owner of the rule).

Every path a user gives (``--workdir``, ``data.data_dir``, ``init.source``, the run folders
an analysis reads, a sweep folder, a report's output folder) goes through `to_path`:

- a local path stays local (``~`` expanded, made absolute), as before;
- a ``gs://bucket/...`` path is an `epath.Path` on epath's fsspec backend, i.e. gcsfs
  (the ``[gcs]`` extra). Before its first use the process checks, once per process, that
  gcsfs is importable and that Google credentials are found; a missing piece is one
  `ConfigError` naming the install command or the auth step.

Orbax and tensorstore read and write ``gs://`` checkpoints through their own GCS support
(`checkpoints`), which needs no gcsfs but the same credentials.

Writes: `write_text` replaces a file in one step. A local file is written to a temporary
name in its folder and renamed (atomic on POSIX); a GCS object is uploaded in one request,
which GCS makes visible whole or not at all, so no temporary object is needed there.

A local GCS emulator (the tests) is used when ``STORAGE_EMULATOR_HOST`` is set (gcsfs and
Google's client libraries read it); it needs no credentials, so none are looked for then.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etils import epath

from transfusion_jax.config import ConfigError

GCS_PREFIX = "gs://"
INSTALL_COMMAND = "pip install 'transfusion_jax[gcs]'"
AUTH_STEP = ("run `gcloud auth application-default login` (on a Cloud VM or TPU VM, give the "
             "VM a service account with access to the bucket), or set "
             "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file")

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
    """Whether ``path`` names a remote file system (``scheme://...``)."""
    return "://" in os.fspath(path)


def is_gcs(path: PathLike) -> bool:
    """Whether ``path`` is a Google Cloud Storage path (``gs://bucket/...``)."""
    return os.fspath(path).startswith(GCS_PREFIX)


def missing_extra_message(path: PathLike) -> str:
    """The one line for a ``gs://`` path when gcsfs is not installed."""
    return (f"{os.fspath(path)}: gs:// paths need the gcs extra (gcsfs), which is not "
            f"installed; install it with `{INSTALL_COMMAND}`")


def missing_credentials_message(path: PathLike) -> str:
    """The one line for a ``gs://`` path when no Google credentials are found."""
    return f"{os.fspath(path)}: no Google Cloud credentials found for gs:// paths; {AUTH_STEP}"


@functools.cache
def _gcs_problem() -> str | None:
    """``"extra"`` (gcsfs missing), ``"credentials"`` (none found) or None; once a process."""
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        return "extra"
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return None  # a local emulator: no credentials needed
    try:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
    except ImportError:
        return "extra"
    try:
        google.auth.default()
    except DefaultCredentialsError:
        return "credentials"
    return None


def check_remote(path: PathLike) -> None:
    """Raises `ConfigError` when ``path`` is a ``gs://`` path this process cannot use.

    Raises:
      ConfigError: gcsfs (the ``[gcs]`` extra) is not installed, or no Google credentials
        are found; the message names the install command or the auth step.
    """
    if not is_gcs(path):
        return
    problem = _gcs_problem()
    if problem == "extra":
        raise ConfigError(missing_extra_message(path))
    if problem == "credentials":
        raise ConfigError(missing_credentials_message(path))


def to_path(path: PathLike) -> epath.Path:
    """A user's path string as an `epath.Path`: local ones expanded and absolute, remote
    ones checked (`check_remote`) and kept as they are.

    Raises:
      ConfigError: a ``gs://`` path without the ``[gcs]`` extra or without credentials.
    """
    if isinstance(path, epath.Path) and is_remote(path):
        return path
    text = os.fspath(path)
    if is_remote(text):
        check_remote(text)
        return epath.Path(text)
    return epath.Path(Path(text).expanduser().absolute())


def local_path(path: PathLike) -> Path | None:
    """``path`` as a `pathlib.Path` when it is local, else None (for code that can only
    work on local files, e.g. a C++ reader)."""
    return None if is_remote(path) else Path(os.fspath(path)).expanduser().absolute()


def write_bytes(path: PathLike, data: bytes) -> epath.Path:
    """Writes ``data`` to ``path`` in one step (its folder created); returns the path.

    Local: a temporary file in the same folder renamed over ``path`` (atomic). ``gs://``:
    one upload (a GCS object appears whole or not at all).
    """
    target = to_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(target):
        target.write_bytes(data)
        return target
    with replaced_atomically(Path(target)) as tmp:
        tmp.write_bytes(data)
    return target


@contextlib.contextmanager
def replaced_atomically(target: Path) -> Iterator[Path]:
    """A temporary path in ``target``'s folder to write; renamed over the local ``target``
    when the block ends (atomic on POSIX: readers see the old file or the new one, never a
    part), removed if the block raises."""
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: PathLike, text: str) -> epath.Path:
    """Writes ``text`` (UTF-8) to ``path`` in one step, as `write_bytes`."""
    return write_bytes(path, text.encode())


def read_text_or(path: PathLike, default: Any = None) -> Any:
    """The text of ``path``, or ``default`` when it does not exist."""
    p = to_path(path)
    return p.read_text() if p.exists() else default
