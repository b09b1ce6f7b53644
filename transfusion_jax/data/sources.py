"""Opening datasets as random-access sources (for grain) with clear errors.

`open_source` is the one entry point: it returns a `grain`-compatible source (``len`` and
``__getitem__`` giving ``{"image": uint8 (h, w, c), "label": int | float32 (k,)}``) plus a
`DatasetMeta`. Names resolve in this order:

1. ``image_folder``: a local folder of images with a labels CSV (`folder.ImageFolderSource`),
   the shape of art datasets such as RASTA, Paintings or IconArt.
2. The shipped datasets of `shipped.SHIPPED_BUILDERS` (``mnist5k``, ``digits``,
   ``fashion_mnist``): prepared into ``data_dir`` on first use, offline, in seconds.
3. Any other tfds name (``cifar10``, ``diabetic_retinopathy_detection``, ``chexpert``,
   ``imagenet2012``, ...; ``name/config`` picks a builder config, e.g.
   ``diabetic_retinopathy_detection/btgraham-300``): read from ``data_dir`` as already
   prepared with ``file_format="array_record"``. Nothing is downloaded; an unprepared
   dataset raises `DatasetNotFoundError` saying where tfds looked and how to prepare it.
   A ``gs://`` data dir is staged to a local cache first (`staging`: array_record reads
   local files only); a shipped dataset is prepared locally and uploaded there.

``data_config.label_transform`` (see `labels.LABEL_TRANSFORMS`) maps the stored labels to a
task's labels as records are read (e.g. DR grades -> referable DR, CheXpert's 14
observations -> 5 pathologies, multi-hot); the transform then decides the meta's
``num_classes`` and ``multi_label``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from transfusion_jax.data.errors import DatasetNotFoundError
from transfusion_jax.data.folder import ImageFolderSource
from transfusion_jax.data.labels import LabelFn, LabelTransform, RawLabel, get_label_transform
from transfusion_jax.data.shipped import SHIPPED_BUILDERS
from transfusion_jax.paths import check_remote, is_remote

log = logging.getLogger(__name__)

FOLDER_DATASET = "image_folder"


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
    """What the model and the loss need to know about a dataset."""

    name: str
    num_classes: int
    multi_label: bool
    num_examples: int


def default_data_dir() -> str:
    """``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets`` (tfds's own default)."""
    return os.environ.get("TFDS_DATA_DIR", str(Path("~/tensorflow_datasets").expanduser()))


def _quiet_tfds():
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    return tfds


class _RecordSource:
    """Adapts a tfds data source to ``{"image", "label"}`` records with chosen keys.

    ``label_fn``, when given, maps each stored label to the task's label (a bound
    `labels.LabelTransform`). ``cache_key`` names what the records are (for
    `in_memory.load`, which reads a split once per process).
    """

    def __init__(self, source: Any, image_key: str, label_key: str,
                 label_fn: LabelFn | None = None, cache_key: tuple | None = None):
        self._source = source
        self._image_key = image_key
        self._label_key = label_key
        self._label_fn = label_fn
        self.cache_key = cache_key

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._source[index]
        label = np.asarray(record[self._label_key])
        return {"image": np.asarray(record[self._image_key]),
                "label": label if self._label_fn is None else self._label_fn(label)}

    def __repr__(self) -> str:
        return f"_RecordSource({self._source!r})"


class _RelabelledSource:
    """Any ``{"image", "label"}`` source with its labels mapped by ``label_fn``."""

    def __init__(self, source: Any, label_fn: LabelFn):
        self._source, self._label_fn = source, label_fn

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._source[index]
        return {**record, "label": self._label_fn(record["label"])}

    def __repr__(self) -> str:
        return f"_RelabelledSource({self._source!r})"


def _label_feature(builder: Any, name: str, label_key: str) -> Any:
    features = builder.info.features
    if label_key not in features:
        raise DatasetNotFoundError(
            f"dataset {name!r} has no feature {label_key!r}; its features are "
            f"{sorted(features.keys())}: set --config.data.label_key")
    return features[label_key]


def _raw_label(builder: Any, name: str, label_key: str) -> RawLabel:
    """A builder's label feature described for a label transform."""
    import tensorflow_datasets as tfds

    label = _label_feature(builder, name, label_key)
    if isinstance(label, tfds.features.ClassLabel):
        return RawLabel("class", tuple(label.names), name, label_key)
    if isinstance(label, tfds.features.Sequence) and isinstance(label.feature,
                                                                 tfds.features.ClassLabel):
        return RawLabel("class_sequence", tuple(label.feature.names), name, label_key)
    shape = getattr(label, "shape", ())
    if len(shape) == 1 and shape[0]:
        return RawLabel("multi_hot", tuple(str(i) for i in range(shape[0])), name, label_key)
    return RawLabel(type(label).__name__, (), name, label_key)


def _label_meta(builder: Any, name: str, label_key: str) -> tuple[int, bool]:
    """``(num_classes, multi_label)`` from a builder's label feature."""
    import tensorflow_datasets as tfds

    label = _label_feature(builder, name, label_key)
    if isinstance(label, tfds.features.ClassLabel):
        return label.num_classes, False
    if isinstance(label, tfds.features.Sequence) and isinstance(label.feature,
                                                                 tfds.features.ClassLabel):
        raise DatasetNotFoundError(
            f"dataset {name!r} has variable-length labels {label_key!r}; set "
            "--config.data.label_transform to one that maps them to a fixed task label "
            "(e.g. chexpert5_uones or chexpert5_uzeros for chexpert)")
    shape = getattr(label, "shape", ())
    if len(shape) == 1 and shape[0]:
        return int(shape[0]), True
    raise DatasetNotFoundError(
        f"dataset {name!r}: label feature {label_key!r} is neither a ClassLabel nor a fixed "
        "multi-hot vector; set --config.data.label_key to one that is")


def _builder(name: str, data_dir: str) -> Any:
    """The tfds builder of ``name`` on ``data_dir`` (shipped or catalog); prepares nothing.

    Raises:
      DatasetNotFoundError: an unknown name.
    """
    tfds = _quiet_tfds()
    if name in SHIPPED_BUILDERS:
        return SHIPPED_BUILDERS[name](data_dir=data_dir, file_format="array_record")
    try:
        return tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetNotFoundError(
            f"unknown dataset {name!r}: it is neither one of the shipped datasets "
            f"({', '.join(sorted(SHIPPED_BUILDERS))}), nor {FOLDER_DATASET!r}, nor a "
            "tensorflow-datasets name (see the tfds catalog)") from e


def _not_prepared(name: str, builder: Any, data_dir: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"dataset {name!r} is not prepared: tfds looked in {builder.data_dir}. "
        f"Prepare it once with `tfds build {name} --data_dir={data_dir} "
        "--file_format=array_record` (manual-download datasets such as "
        "diabetic_retinopathy_detection, chexpert and imagenet2012 also need "
        "--manual_dir=FOLDER_WITH_THE_ARCHIVES), or set --config.data.data_dir.")


def _staged(name: str, data_dir: str) -> str:
    """A remote (``gs://``) data dir's dataset mirrored locally (`staging`); returns the
    local data dir to read. A shipped dataset not yet under ``data_dir`` is prepared locally
    and uploaded there first."""
    from transfusion_jax.data import staging

    check_remote(data_dir)
    remote = _builder(name, data_dir)
    local_root = staging.mirror_of(data_dir)
    if not remote.is_prepared():
        if name not in SHIPPED_BUILDERS:
            raise _not_prepared(name, remote, data_dir)
        local = _prepared_shipped(name, str(local_root))
        staging.upload(local.data_dir, remote.data_dir)
        return str(local_root)
    return str(staging.stage(remote.data_dir, data_dir))


_PREPARING = threading.Lock()  # one shipped dataset prepared at a time in a process


def _prepared_shipped(name: str, data_dir: str) -> Any:
    """The builder of shipped dataset ``name`` in ``data_dir``, prepared first if needed.

    Runs trained side by side in threads may open the same dataset at the same moment; tfds
    prepares into a temporary folder and renames it, so a second preparation would fail on
    the rename. The lock makes the first prepare it and the others find it prepared.
    """
    with _PREPARING:
        builder = _builder(name, data_dir)
        if not builder.is_prepared():
            log.info("preparing %s into %s (offline, once)", name, builder.data_dir)
            builder.download_and_prepare()
    return builder


def _open_tfds(name: str, split: str, data_dir: str, image_key: str, label_key: str,
               transform: LabelTransform | None = None):
    if is_remote(data_dir):
        data_dir = _staged(name, data_dir)
    if name in SHIPPED_BUILDERS:
        builder = _prepared_shipped(name, data_dir)
    else:
        builder = _builder(name, data_dir)
        if not builder.is_prepared():
            raise _not_prepared(name, builder, data_dir)
        file_format = builder.info.file_format
        file_format = str(getattr(file_format, "value", file_format) or "")
        if "array_record" not in file_format:
            raise DatasetNotFoundError(
                f"dataset {name!r} in {builder.data_dir} was prepared as "
                f"{file_format or 'tfrecord'}, which needs TensorFlow to read; re-prepare it with "
                "--file_format=array_record")
    try:
        source = builder.as_data_source(split=split)
    except (ValueError, KeyError) as e:
        raise DatasetNotFoundError(
            f"dataset {name!r} has no split {split!r} (splits: "
            f"{', '.join(sorted(builder.info.splits.keys()))}): {e}") from e
    if transform is None:
        num_classes, multi_label = _label_meta(builder, name, label_key)
        label_fn = None
    else:
        num_classes, multi_label = transform.num_classes, transform.multi_label
        label_fn = transform.bind(_raw_label(builder, name, label_key))
    meta = DatasetMeta(name, num_classes, multi_label, len(source))
    key = (str(builder.data_dir), split, image_key, label_key,
           None if transform is None else transform.description)
    return _RecordSource(source, image_key, label_key, label_fn, key), meta


def open_source(data_config: Any, split: str) -> tuple[Any, DatasetMeta]:
    """Opens one split of the dataset a config names.

    Args:
      data_config: the ``config.data`` section (``name``, ``data_dir``, ``image_key``,
        ``label_key``, ``label_transform`` and, for ``image_folder``, the ``folder`` section).
      split: a tfds split string (``"train"``, ``"test[:500]"``, ...); for ``image_folder``
        the value of the CSV's split column.

    Returns:
      ``(source, meta)``: a random-access source of ``{"image": uint8 (h, w, c), "label":
      int64 () | float32 (k,)}`` (labels after the label transform) and its meta.

    Raises:
      ConfigError: an unknown ``label_transform``.
      DatasetNotFoundError: the dataset is missing or unprepared, or its labels do not fit
        the label transform.
    """
    name = data_config.name
    transform = get_label_transform(data_config.get("label_transform", ""))
    if name == FOLDER_DATASET:
        folder = data_config.folder
        columns = tuple(folder.label_columns)
        source = ImageFolderSource(
            root=folder.root, csv_path=folder.csv, split=split,
            image_column=folder.image_column, label_columns=columns,
            split_column=folder.split_column, classes=tuple(folder.classes) or None)
        if transform is None:
            return source, DatasetMeta(name, source.num_classes, source.multi_label,
                                       len(source))
        raw = RawLabel("multi_hot" if source.multi_label else "class", tuple(source.classes),
                       name, ", ".join(columns))
        return (_RelabelledSource(source, transform.bind(raw)),
                DatasetMeta(name, transform.num_classes, transform.multi_label, len(source)))
    data_dir = data_config.data_dir or default_data_dir()
    return _open_tfds(name, split, data_dir, data_config.image_key, data_config.label_key,
                      transform)
