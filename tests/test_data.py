"""Data sources: shipped builders, the generic tfds path, image folders, clear errors."""

from __future__ import annotations

import csv
import gzip
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from transfusion_jax.config import base_config
from transfusion_jax.data import DatasetNotFoundError, open_source
from transfusion_jax.data.preprocess import normalize, resize, to_channels
from transfusion_jax.data.shipped import read_idx


def data_config(name: str, data_dir: str, **kw):
    c = base_config().data
    c.name, c.data_dir = name, data_dir
    for k, v in kw.items():
        c[k] = v
    return c


def labels_of(source) -> np.ndarray:
    return np.array([int(source[i]["label"]) for i in range(len(source))])


def test_mnist5k_split_is_stratified_and_disjoint(data_dir):
    train, meta = open_source(data_config("mnist5k", data_dir), "train")
    test, _ = open_source(data_config("mnist5k", data_dir), "test")
    assert (len(train), len(test), meta.num_classes, meta.multi_label) == (4000, 1000, 10, False)
    assert np.bincount(labels_of(train)).tolist() == [400] * 10
    assert np.bincount(labels_of(test)).tolist() == [100] * 10
    # The first 64 test images already span many classes (the source file is sorted).
    assert len(set(labels_of(test)[:64])) >= 8
    image = train[0]["image"]
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8 and image.max() > 100
    train_hashes = {train[i]["image"].tobytes() for i in range(len(train))}
    assert not any(test[i]["image"].tobytes() in train_hashes for i in range(len(test)))


def test_digits_and_split_slicing(data_dir):
    src, meta = open_source(data_config("digits", data_dir), "test[:50]")
    assert len(src) == 50 and meta.num_classes == 10
    assert src[0]["image"].shape == (8, 8, 1) and src[0]["image"].max() <= 255


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    files = {"train": (rng.integers(0, 256, (6, 28, 28)), np.arange(6) % 10),
             "t10k": (rng.integers(0, 256, (3, 28, 28)), np.array([7, 8, 9]))}
    for prefix, (images, labels) in files.items():
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    assert np.array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz"), [7, 8, 9])
    monkeypatch.setenv("TFJ_FASHION_MNIST_DIR", str(tmp_path))
    src, meta = open_source(data_config("fashion_mnist", str(tmp_path / "tfds")), "test")
    assert len(src) == 3 and meta.num_classes == 10
    # tfds stores examples in its own (hashed-key) order: compare as sets of pairs.
    got = {(src[i]["image"][..., 0].tobytes(), int(src[i]["label"])) for i in range(3)}
    images, labels = files["t10k"]
    assert got == {(images[i].astype(np.uint8).tobytes(), int(labels[i])) for i in range(3)}


def test_fashion_mnist_missing_files_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("TFJ_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        open_source(data_config("fashion_mnist", str(tmp_path / "tfds")), "train")


def test_unprepared_tfds_dataset_fails_fast_with_the_fix(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetNotFoundError) as info:
        open_source(data_config("diabetic_retinopathy_detection", str(tmp_path)), "train")
    assert time.perf_counter() - start < 10  # never a network retry
    message = str(info.value)
    assert "not prepared" in message and str(tmp_path) in message
    assert "tfds build diabetic_retinopathy_detection" in message and "--manual_dir" in message


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="unknown dataset 'mnist6k'"):
        open_source(data_config("mnist6k", str(tmp_path)), "train")


def test_real_tfds_builder_read_through_generic_path(tmp_path):
    """cifar10's own builder (features, version, paths) prepared from tiny fake data."""
    from tensorflow_datasets.image_classification import cifar

    class TinyCifar10(cifar.Cifar10, skip_registration=True):
        name = "cifar10"

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6), "test": self._generate_examples(2)}

        def _generate_examples(self, n):  # PIL images: encoding them needs no TensorFlow
            rng = np.random.default_rng(n)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                yield i, {"id": str(i), "image": Image.fromarray(pixels), "label": i % 10}

    tfds.disable_progress_bar()
    TinyCifar10(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    src, meta = open_source(data_config("cifar10", str(tmp_path)), "train")
    assert (meta.num_classes, len(src)) == (10, 6)
    rng = np.random.default_rng(6)
    expected = {rng.integers(0, 256, (32, 32, 3), dtype=np.uint8).tobytes() for _ in range(6)}
    assert {src[i]["image"].tobytes() for i in range(6)} == expected  # lossless PNG round trip
    with pytest.raises(DatasetNotFoundError, match="no split 'validation'"):
        open_source(data_config("cifar10", str(tmp_path)), "validation")


def _folder_dataset(root, multi_label: bool):
    rng = np.random.default_rng(0)
    header = ["item", "set", "angel", "Mary"] if multi_label else ["item", "set", "style"]
    rows = []
    for i in range(5):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)).save(root / name)
        split = "test" if i == 4 else "train"
        labels = [i % 2, 1 - i % 2] if multi_label else [["Baroque", "Cubism"][i % 2]]
        rows.append([name, split, *labels])
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def folder_config(root, label_columns):
    c = base_config().data
    c.name = "image_folder"
    c.folder.root, c.folder.csv = str(root), "labels.csv"
    c.folder.image_column, c.folder.split_column = "item", "set"
    c.folder.label_columns = label_columns
    return c


def test_image_folder_single_label(tmp_path):
    _folder_dataset(tmp_path, multi_label=False)
    src, meta = open_source(folder_config(tmp_path, ("style",)), "train")
    assert (len(src), meta.num_classes, meta.multi_label) == (4, 2, False)
    assert src.classes == ("Baroque", "Cubism")
    assert [int(src[i]["label"]) for i in range(4)] == [0, 1, 0, 1]
    assert src[1]["image"].shape == (11, 12, 3)


def test_image_folder_multi_label_and_errors(tmp_path):
    _folder_dataset(tmp_path, multi_label=True)
    src, meta = open_source(folder_config(tmp_path, ("angel", "Mary")), "test")
    assert (len(src), meta.num_classes, meta.multi_label) == (1, 2, True)
    assert src[0]["label"].tolist() == [0.0, 1.0]
    with pytest.raises(DatasetNotFoundError, match=r"lacks the column\(s\) \['Joseph'\]"):
        open_source(folder_config(tmp_path, ("angel", "Joseph")), "test")
    text = (tmp_path / "labels.csv").read_text().replace("img4.png,test,0,1", "img4.png,test,,1")
    (tmp_path / "labels.csv").write_text(text)
    src, _ = open_source(folder_config(tmp_path, ("angel", "Mary")), "test")
    assert src[0]["label"].tolist() == [0.0, 1.0]  # a blank cell is an unmentioned label
    (tmp_path / "labels.csv").write_text(text.replace(",,1", ",yes,1"))
    with pytest.raises(DatasetNotFoundError, match="'yes', not a number"):
        open_source(folder_config(tmp_path, ("angel", "Mary")), "test")
    (tmp_path / "labels.csv").write_text(text)
    (tmp_path / "img0.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing or not images, e.g. .*img0.png"):
        open_source(folder_config(tmp_path, ("angel", "Mary")), "train")


def test_preprocess_ops():
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    rgb = to_channels(grey, 3)
    assert rgb.shape == (4, 4, 3) and np.array_equal(rgb[..., 2], grey[..., 0])
    assert np.array_equal(to_channels(rgb, 1), grey)  # luminance weights sum to 1
    assert resize(rgb, 8).shape == (8, 8, 3)
    assert resize(grey, 2).shape == (2, 2, 1)
    full = np.full((2, 2, 1), 255, np.uint8)
    assert np.allclose(normalize(full, "zero_one"), 1.0)
    assert np.allclose(normalize(full, "efficientnet"), 1.0)
    assert np.allclose(normalize(np.zeros((1, 1, 1), np.uint8), "minus_one_one"), -1.0)
