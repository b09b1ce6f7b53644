"""Recipe 2 (Transfusion at scale) on tiny fake data through the real tfds builders.

The real ``diabetic_retinopathy_detection``, ``chexpert`` and ``cifar10`` builders (their
features, versions, configs and, for DR and CheXpert, their own CSV parsing in
``_generate_examples``) are prepared offline as array_record from a few fake images in the
manual-download layout, then read through `open_source` and trained on with
``configs/recipe_at_scale.py`` shrunk by its ``smoke`` modifier.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs.recipe_at_scale import MODELS, TASKS, get_config
from tests.conftest import apply_overrides
from transfusion_jax.config import ConfigError, base_config
from transfusion_jax.data import DataError, DatasetNotFoundError, open_source
from transfusion_jax.data.labels import (
    CHEXPERT5,
    CHEXPERT_OBSERVATIONS,
    LABEL_TRANSFORMS,
    RawLabel,
)
from transfusion_jax.train.loop import train_and_evaluate
from transfusion_jax.train.setup import build_run, validate

DR = "diabetic_retinopathy_detection/btgraham-300"
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]
# A CSV cell -> U-Ones / U-Zeros value ("" = unmentioned).
CELL_UONES = {"1.0": 1.0, "-1.0": 1.0, "0.0": 0.0, "": 0.0}
CELL_UZEROS = {"1.0": 1.0, "-1.0": 0.0, "0.0": 0.0, "": 0.0}


def _jpeg(path: Path, shape: tuple[int, ...], rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, format="JPEG")


def _prepare_dr(data_dir: str, manual: Path) -> dict[str, int]:
    """Kaggle's layout (train/*.jpeg, trainLabels.csv, the solution CSV with Usage)."""
    from tensorflow_datasets.image_classification import diabetic_retinopathy_detection as drd

    rng = np.random.default_rng(0)
    grades = {f"{i}_{'left' if i % 2 else 'right'}": i % 5 for i in range(32)}
    for name in grades:
        _jpeg(manual / "train" / f"{name}.jpeg", (40, 48, 3), rng)
    names = list(grades)
    with open(manual / "trainLabels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "level"], *[[n, grades[n]] for n in names[:16]]])
    with open(manual / "solution.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "level", "Usage"],
                                 *[[n, grades[n], "Public"] for n in names[16:]]])

    class TinyDR(drd.DiabeticRetinopathyDetection, skip_registration=True):
        name = "diabetic_retinopathy_detection"

        def _split_generators(self, dl_manager):  # the real one downloads the test labels
            images = str(manual / "train")
            return {"train": self._generate_examples(images, str(manual / "trainLabels.csv")),
                    "validation": self._generate_examples(
                        images, str(manual / "solution.csv"), csv_usage="Public")}

        def _process_image(self, filepath):  # the real one needs TensorFlow and OpenCV
            return filepath

    TinyDR(config="btgraham-300", data_dir=data_dir,
           file_format="array_record").download_and_prepare()
    return grades


def _prepare_chexpert(data_dir: str, manual: Path) -> dict[str, list[str]]:
    """CheXpert-v1.0-small's layout: train/ and valid/ images, train.csv and valid.csv."""
    from tensorflow_datasets.image_classification import chexpert

    rng = np.random.default_rng(1)
    root = manual / "CheXpert-v1.0-small"
    cells, rows = ["1.0", "-1.0", "0.0", ""], {}
    for split, n in (("train", 12), ("valid", 16)):
        lines = []
        for i in range(n):
            path = f"CheXpert-v1.0-small/{split}/patient{i:05d}/study1/view1_frontal.jpg"
            _jpeg(manual / path, (40, 36), rng)  # grey, as the real X-rays
            states = ([cells[(i * 7 + 3 * j) % 4] for j in range(14)] if split == "train"
                      else [cells[(i + j) % 2 * 2] for j in range(14)])  # valid: 1.0 / 0.0
            rows[path] = states
            lines.append([path, "Female", "60", "Frontal", "AP", *states])
        with open(root / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([CHEXPERT_HEADER, *lines])

    class TinyChexpert(chexpert.Chexpert, skip_registration=True):
        name = "chexpert"

        def _split_generators(self, dl_manager):  # the real one checks paths with TensorFlow
            return {split: self._generate_examples(str(manual), str(root / f"{csv_name}.csv"))
                    for split, csv_name in (("train", "train"), ("validation", "valid"))}

    TinyChexpert(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return rows


def _prepare_cifar10(data_dir: str) -> None:
    from tensorflow_datasets.image_classification import cifar

    class TinyCifar10(cifar.Cifar10, skip_registration=True):
        name = "cifar10"

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(16), "test": self._generate_examples(16)}

        def _generate_examples(self, n):
            rng = np.random.default_rng(n)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                yield i, {"id": str(i), "image": Image.fromarray(pixels), "label": i % 10}

    TinyCifar10(data_dir=data_dir, file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> dict:
    """A tfds data dir with tiny DR, CheXpert and CIFAR-10; the fake labels by record name."""
    root = tmp_path_factory.mktemp("at_scale")
    data_dir = str(root / "tfds")
    tfds.disable_progress_bar()
    grades = _prepare_dr(data_dir, root / "manual" / "diabetic_retinopathy_detection")
    rows = _prepare_chexpert(data_dir, root / "manual" / "chexpert")
    _prepare_cifar10(data_dir)
    return {"data_dir": data_dir, "grades": grades, "chexpert": rows}


def data_config(name: str, data_dir: str, label_transform: str = ""):
    c = base_config().data
    c.name, c.data_dir, c.label_transform = name, data_dir, label_transform
    return c


def raw_names(name: str, data_dir: str, split: str) -> list[str]:
    """Each record's ``name`` feature, read with tfds directly (our source drops it)."""
    source = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    records = source.as_data_source(split=split)
    return [records[i]["name"].decode() for i in range(len(records))]


def recipe(arg: str, data_dir: str, **overrides):
    """``configs/recipe_at_scale.py:ARG`` on ``data_dir`` with dotted-key overrides."""
    config = get_config(arg)
    config.data.data_dir = data_dir
    config.log.tensorboard, config.log.plot = False, False
    return apply_overrides(config, overrides)


SMALL_MODEL = {"model.name": "cbr_tiny", "model.options.width": 0.125}


@pytest.mark.parametrize("split", ["train", "validation"])
def test_referable_dr_labels_reach_the_source(fake, split):
    source, meta = open_source(data_config(DR, fake["data_dir"], "referable_dr"), split)
    assert (meta.num_classes, meta.multi_label, len(source)) == (2, False, 16)
    names = raw_names(DR, fake["data_dir"], split)
    got = [int(source[i]["label"]) for i in range(len(source))]
    assert got == [int(fake["grades"][n] >= 2) for n in names]
    assert source[0]["image"].shape == (40, 48, 3) and source[0]["image"].dtype == np.uint8
    stored, _ = open_source(data_config(DR, fake["data_dir"]), split)  # no transform: grades
    assert [int(stored[i]["label"]) for i in range(len(stored))] == [fake["grades"][n]
                                                                     for n in names]


@pytest.mark.parametrize("transform, cells", [("chexpert5_uones", CELL_UONES),
                                              ("chexpert5_uzeros", CELL_UZEROS)])
def test_chexpert5_labels_reach_the_source(fake, transform, cells):
    source, meta = open_source(data_config("chexpert", fake["data_dir"], transform), "train")
    assert (meta.num_classes, meta.multi_label, len(source)) == (5, True, 12)
    names = raw_names("chexpert", fake["data_dir"], "train")
    for i, name in enumerate(names):
        states = dict(zip(CHEXPERT_OBSERVATIONS, fake["chexpert"][name], strict=True))
        label = source[i]["label"]
        assert label.dtype == np.float32 and label.shape == (5,)
        assert label.tolist() == [cells[states[p]] for p in CHEXPERT5]
    assert source[0]["image"].shape[:2] == (40, 36)


def test_label_transform_errors(fake):
    with pytest.raises(ConfigError, match="did you mean 'referable_dr'"):
        open_source(data_config("cifar10", fake["data_dir"], "referable"), "train")
    with pytest.raises(DatasetNotFoundError,
                       match=r"referable_dr.*grades 0-4.*'cifar10'.*label_transform=''"):
        open_source(data_config("cifar10", fake["data_dir"], "referable_dr"), "train")
    with pytest.raises(DatasetNotFoundError, match="chexpert5_uones.*CheXpert's per-observation"):
        open_source(data_config(DR, fake["data_dir"], "chexpert5_uones"), "train")
    with pytest.raises(DatasetNotFoundError, match="label_transform.*chexpert5_uones"):
        open_source(data_config("chexpert", fake["data_dir"]), "train")  # needs a transform
    referable = LABEL_TRANSFORMS["referable_dr"].bind(RawLabel("class", tuple("01234"), "dr"))
    assert [int(referable(np.int64(g))) for g in range(5)] == [0, 0, 1, 1, 1]
    with pytest.raises(DataError, match="no DR grade"):
        referable(np.int64(-1))  # tfds's unlabelled 'sample' split
    states = ("uncertain", "positive", "negative", "unmentioned")
    uones = LABEL_TRANSFORMS["chexpert5_uones"].bind(RawLabel("class_sequence", states, "cx"))
    with pytest.raises(DataError, match="not one per CheXpert observation"):
        uones(np.zeros(13, np.int64))


def test_label_transforms_on_an_image_folder(tmp_path):
    rng = np.random.default_rng(2)
    header = ["image", "split", "level", *CHEXPERT5]
    rows = []
    for i in range(6):
        _jpeg(tmp_path / f"{i}.jpeg", (8, 8, 3), rng)
        rows.append([f"{i}.jpeg", "train", i % 5, *[(i + j) % 3 - 1 for j in range(5)]])
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    c = data_config("image_folder", "", "referable_dr")
    c.folder.root, c.folder.label_columns = str(tmp_path), ("level",)
    source, meta = open_source(c, "train")
    assert (meta.num_classes, meta.multi_label) == (2, False)
    assert [int(source[i]["label"]) for i in range(6)] == [int(i % 5 >= 2) for i in range(6)]
    c.label_transform, c.folder.label_columns = "chexpert5_uzeros", tuple(reversed(CHEXPERT5))
    source, meta = open_source(c, "train")
    assert (meta.num_classes, meta.multi_label) == (5, True)
    assert source[1]["label"].tolist() == [0.0, 1.0, 0.0, 0.0, 1.0]  # columns: 0 1 -1 0 1
    c.label_transform = "referable_dr"
    with pytest.raises(DatasetNotFoundError, match="referable_dr"):
        open_source(c, "train")  # multi-hot columns are not grades


def test_recipe_args_sizes_and_validation():
    for task in TASKS:
        for model in MODELS:
            c = get_config(f"{task}_{model}")
            validate(c, 8)
            assert (c.model.name, c.data.channels, c.data.normalize) == (model, 3, "imagenet")
            assert c.init.name == "random" and c.train.batch_size % 32 == 0
    assert get_config(None).data.name == DR
    assert get_config("dr_inception_v3").data.image_size == 587
    assert get_config("chexpert_resnet50").data.image_size == 224
    dr = get_config("dr_resnet50")
    assert (dr.convergence.metric, dr.convergence.threshold) == ("auc", 0.91)
    assert dr.data.label_transform == "referable_dr"
    assert get_config("chexpert_resnet50,uzeros").data.label_transform == "chexpert5_uzeros"
    pretrained = get_config("cifar10_resnet50,pretrained,bf16")
    assert (pretrained.init.name, tuple(pretrained.init.options.dont_load)) == ("pretrained",
                                                                                ("^head/",))
    assert pretrained.model.dtype == "bfloat16"
    assert get_config("dr_inception_v3,smoke").data.image_size == 75
    assert set(LABEL_TRANSFORMS) >= {t["label_transform"] for t in TASKS.values()} - {""}
    for bad in ("dr_vgg16", "mnist_resnet50", "dr_resnet50,fast", "dr_resnet50,uzeros"):
        with pytest.raises(ValueError, match="recipe_at_scale"):
            get_config(bad)


def _finite_auc(workdir: Path) -> float:
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 4
    return summary["final_eval"]["auc"]


def test_dr_recipe_trains_on_referable_dr(fake, tmp_path):
    config = recipe("dr_resnet50,smoke", fake["data_dir"], **SMALL_MODEL)
    setup = build_run(config)
    assert (setup.loss_name, setup.model.num_classes) == ("softmax", 2)
    train_and_evaluate(config, tmp_path)
    assert math.isfinite(_finite_auc(tmp_path))


def test_chexpert_recipe_trains_multi_label(fake, tmp_path):
    config = recipe("chexpert_resnet50,smoke", fake["data_dir"], **SMALL_MODEL)
    setup = build_run(config)
    assert (setup.loss_name, setup.model.num_classes, setup.meta.multi_label) == ("sigmoid", 5,
                                                                                 True)
    assert setup.train_source[0]["label"].shape == (5,)
    train_and_evaluate(config, tmp_path)
    assert math.isfinite(_finite_auc(tmp_path))


def test_cifar10_recipe_trains_ten_classes(fake, tmp_path):
    config = recipe("cifar10_resnet50,smoke", fake["data_dir"], **SMALL_MODEL)
    assert (config.data.image_size, config.convergence.metric) == (32, "accuracy")
    summary = train_and_evaluate(config, tmp_path)
    assert summary["convergence"]["metric"] == "accuracy"
    assert summary["final_eval"]["num_examples"] == 16 and math.isfinite(_finite_auc(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["dr_resnet50,smoke", "chexpert_inception_v3,smoke",
                                 "cifar10_resnet50,smoke"])
def test_recipe_trains_the_real_model(fake, tmp_path, arg):
    """A real ResNet-50 / Inception-v3 (at 32 / 75 px) through the whole recipe."""
    train_and_evaluate(recipe(arg, fake["data_dir"]), tmp_path)
    assert math.isfinite(_finite_auc(tmp_path))
