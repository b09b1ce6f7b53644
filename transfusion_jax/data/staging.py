"""Remote (``gs://``) tfds data dirs, staged to a local cache before reading.

tfds reads a prepared dataset's metadata (``dataset_info.json``, ``features.json``) from
``gs://`` through etils epath, but the records are read by array_record's C++ reader, which
opens local files only (given a ``gs://`` name it does not read the object). So a dataset
under a remote data dir is copied once, through epath (gcsfs), into a local mirror,
``$TFJ_DATA_CACHE/<bucket>/<path>`` (default ``~/.cache/transfusion_jax/data``), and read
from there. A file already in the mirror with the remote size is not copied again; each copy
lands under a temporary name and is renamed, so processes staging the same files side by
side never read a half-written one.
"""

from __future__ import annotations

import os
from pathlib import Path

from etils import epath

from transfusion_jax.paths import replaced_atomically, to_path, write_bytes

CACHE_ENV = "TFJ_DATA_CACHE"


def cache_root() -> Path:
    """``$TFJ_DATA_CACHE`` or ``~/.cache/transfusion_jax/data``."""
    return Path(os.environ.get(CACHE_ENV, "~/.cache/transfusion_jax/data")).expanduser()


def mirror_of(remote: str | os.PathLike) -> Path:
    """The local mirror folder of a remote folder (``gs://b/x`` -> ``<cache>/b/x``)."""
    _, _, rest = os.fspath(remote).partition("://")
    return cache_root() / rest.strip("/")


def _files(folder: epath.Path) -> list[epath.Path]:
    """Every file under ``folder``, recursively."""
    out = []
    for entry in folder.iterdir():
        if entry.is_dir():
            out.extend(_files(entry))
        else:
            out.append(entry)
    return out


def _copy(source: epath.Path, target: Path) -> None:
    """Copies ``source`` to ``target`` in 16 MiB chunks, through a temporary name in its
    folder (`paths.replaced_atomically`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(target) as tmp, source.open("rb") as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 24):
            dst.write(chunk)


def stage(remote_folder: str | os.PathLike, remote_root: str | os.PathLike) -> Path:
    """Mirrors ``remote_folder`` (a dataset version folder under the data dir
    ``remote_root``) locally; returns the local mirror of ``remote_root``.

    Files already mirrored with the same size are kept.
    """
    folder = to_path(remote_folder)
    for source in _files(folder):
        target = mirror_of(source)
        if not target.is_file() or target.stat().st_size != source.stat().length:
            _copy(source, target)
    return mirror_of(remote_root)


def upload(local_folder: str | os.PathLike, remote_folder: str | os.PathLike) -> None:
    """Copies every file under ``local_folder`` to ``remote_folder`` (same layout)."""
    local = Path(local_folder)
    remote = to_path(remote_folder)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            write_bytes(remote / str(path.relative_to(local)), path.read_bytes())
