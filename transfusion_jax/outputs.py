"""Result files in one place: CSV tables and headless matplotlib figures.

Every job writes its tables and figures through these helpers, so the conventions are the
same everywhere: floats with 6 decimals, a value that was not computed (NaN or None) as an
empty cell (never a literal ``nan`` that reads like a failed computation), figures rendered
with the non-interactive ``Agg`` backend and closed after saving. Paths may be local or
``gs://`` (`transfusion_jax.paths`); a figure is written through a file object, so the same
code writes both.

This module imports nothing of the project but `transfusion_jax.paths`.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from etils import epath

from transfusion_jax.paths import to_path, write_bytes, write_text


@functools.cache
def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless ``Agg`` backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def __getattr__(name: str) -> Any:
    """``from transfusion_jax.outputs import plt``: `pyplot`, imported on first use."""
    if name == "plt":
        return pyplot()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def save_figure(fig: Any, path: str | Path, *, dpi: int = 110, **kwargs: Any) -> epath.Path:
    """Saves ``fig`` as ``path`` (its folder created; local or ``gs://``) and closes it;
    returns the path. The format is the suffix's (``.png``, ``.pdf``, ``.svg``)."""
    path = to_path(path)
    buffer = io.BytesIO()
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    fig.savefig(buffer, dpi=dpi, **kwargs)
    pyplot().close(fig)
    return write_bytes(path, buffer.getvalue())


def cell(value: Any, *, digits: int | None = 6) -> Any:
    """A CSV cell: floats with ``digits`` decimals (None: full precision), NaN / None as an
    empty cell; anything else as it is."""
    if value is None:
        return ""
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        value = float(value)
        if math.isnan(value):
            return ""
        return repr(value) if digits is None else f"{value:.{digits}f}"
    return value


def nan_to_none(array: Any) -> Any:
    """An array as nested lists for JSON, NaN as None (``null``; JSON has no NaN)."""
    import numpy as np

    array = np.asarray(array, dtype=np.float64)
    return np.where(np.isnan(array), None, array).tolist()


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]], *,
              digits: int | None = 6) -> epath.Path:
    """Writes a CSV table (cells through `cell`; local or ``gs://``); returns its path."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows([cell(v, digits=digits) for v in row] for row in rows)
    return write_text(path, text.getvalue())


def write_csv_dicts(path: str | Path, rows: Sequence[Mapping[str, Any]], *,
                    header: Sequence[str] = (), digits: int | None = 6) -> epath.Path:
    """Writes dict rows as a CSV table; the header is ``header`` or the first row's keys."""
    header = list(header) or (list(rows[0]) if rows else [])
    return write_csv(path, header, ([row.get(k) for k in header] for row in rows),
                     digits=digits)
