"""A local folder of images plus a labels CSV, as art datasets (RASTA, Paintings, IconArt) ship.

The CSV has one row per image:

- ``image_column``: the image path relative to ``root``;
- ``split_column`` (optional): which split the row belongs to (``train``, ``test``, ...);
- labels, either one column holding a class name (single-label, e.g. RASTA's style), or
  several 0/1 columns, one per class (multi-label, e.g. IconArt, Paintings).

Example (multi-label)::

    item,set,angel,Child_Jesus,Mary
    paintings/001.jpg,train,1,0,1
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from transfusion_jax.data.errors import DatasetNotFoundError


class ImageFolderSource:
    """Random-access source of ``{"image": uint8 (h, w, 3), "label": int | float32 (k,)}``.

    Args:
      root: folder the image paths are relative to.
      csv_path: the labels CSV (relative paths are taken from ``root``).
      split: keep rows whose ``split_column`` equals this (ignored without a split column).
      image_column: column holding the image path.
      label_columns: one column (single-label class names) or several 0/1 columns
        (multi-label, one per class).
      split_column: column naming each row's split, or ``""`` for none.
      classes: for single-label, the class names in label order (default: sorted names
        found in the whole CSV, so train and test agree).
    """

    def __init__(self, root: str, csv_path: str, split: str, *, image_column: str = "image",
                 label_columns: Sequence[str] = ("label",), split_column: str = "split",
                 classes: Sequence[str] | None = None):
        self.root = Path(root).expanduser()
        csv_file = Path(csv_path).expanduser()
        if not csv_file.is_absolute():
            csv_file = self.root / csv_file
        if not csv_file.exists():
            raise DatasetNotFoundError(
                f"image_folder: labels CSV {csv_file} does not exist; set "
                "--config.data.folder.csv (and .root) to your dataset's files")
        with open(csv_file, newline="") as f:
            rows = list(csv.DictReader(f))
        columns = set(rows[0]) if rows else set()
        wanted = {image_column, *label_columns} | ({split_column} if split_column else set())
        missing = sorted(wanted - columns)
        if missing:
            raise DatasetNotFoundError(
                f"image_folder: {csv_file} lacks the column(s) {missing}; its columns are "
                f"{sorted(columns)}")
        self.multi_label = len(label_columns) > 1
        if self.multi_label:
            self.classes = tuple(label_columns)
        else:
            found = sorted({r[label_columns[0]] for r in rows})
            self.classes = tuple(classes) if classes else tuple(found)
            unknown = sorted(set(found) - set(self.classes))
            if unknown:
                raise DatasetNotFoundError(
                    f"image_folder: labels {unknown} of {csv_file} are not in `classes`")
        if split_column:
            rows = [r for r in rows if r[split_column] == split]
        if not rows:
            raise DatasetNotFoundError(
                f"image_folder: no rows of {csv_file} belong to split {split!r}")
        self._paths = [self.root / r[image_column] for r in rows]
        if self.multi_label:  # a blank cell is an unmentioned label: 0
            self._labels = np.asarray([[_cell(r[c], c, csv_file) for c in label_columns]
                                       for r in rows], np.float32)
        else:
            index = {c: i for i, c in enumerate(self.classes)}
            self._labels = np.asarray([index[r[label_columns[0]]] for r in rows], np.int64)
        self._csv = csv_file
        _check_images(self._paths, csv_file)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        try:
            with Image.open(self._paths[index]) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for damaged files
            raise DatasetNotFoundError(
                f"image_folder: {self._paths[index]} (listed in {self._csv}) cannot be "
                f"decoded ({e}); fix or remove that row") from e
        return {"image": pixels, "label": self._labels[index]}

    def __repr__(self) -> str:
        return f"ImageFolderSource({self.root}, {len(self)} images)"


def _image_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable image (reading its header only), or None."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path):
            return None
    except (OSError, SyntaxError, ValueError) as e:
        return f"not an image ({type(e).__name__})"


def _check_images(paths: Sequence[Path], csv_file: Path) -> None:
    """Raises `DatasetNotFoundError` naming the listed files that are missing or not images.

    Only each file's header is read (PIL opens lazily), on threads, so a large folder is
    checked in seconds before training rather than failing mid-run.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        problems = [(p, why) for p, why in zip(paths, pool.map(_image_problem, paths),
                                               strict=True) if why]
    if problems:
        path, why = problems[0]
        raise DatasetNotFoundError(
            f"image_folder: {len(problems)} image file(s) listed in {csv_file} are missing "
            f"or not images, e.g. {path} ({why}); fix those rows or the files")


def _cell(text: str, column: str, csv_file: Path) -> float:
    """A multi-label CSV cell as a number (blank = 0); anything else is a clear error."""
    if not text.strip():
        return 0.0
    try:
        return float(text)
    except ValueError as e:
        raise DatasetNotFoundError(f"image_folder: column {column!r} of {csv_file} holds "
                                   f"{text!r}, not a number (labels are 1 / 0 / -1 or blank)"
                                   ) from e
