"""Label transforms: a dataset's stored labels -> the labels of the task a study trains on.

``config.data.label_transform`` names one entry of the explicit dict `LABEL_TRANSFORMS`
(``""`` keeps labels as stored). A transform states the task's label space (``num_classes``,
``multi_label``), which replaces the dataset's own in `DatasetMeta`, and is bound once per
opened split to a description of the stored label (`RawLabel`); binding checks that the
dataset holds what the transform expects and returns a per-example function.

- ``referable_dr``: a DR grade 0-4 as one class (tfds ``diabetic_retinopathy_detection``:
  ``ClassLabel(5)``) -> ``int64 ()``, 1 when grade >= 2 (referable DR) else 0; 2 classes,
  softmax.
- ``chexpert5_uones``: CheXpert's 14 observations, each uncertain / positive / negative /
  unmentioned (tfds ``chexpert``: ``Sequence(ClassLabel)``) -> ``float32 (5,)`` multi-hot
  over `CHEXPERT5`, positive -> 1, uncertain -> 1, negative and unmentioned -> 0; sigmoid.
- ``chexpert5_uzeros``: the same with uncertain -> 0.

Referable DR is a 2-class softmax problem so that the trainer's ROC-AUC *is* the referable-DR
AUC: for 2-class single-label data, `transfusion_jax.train.metrics.ranking_metrics` ranks
examples by the softmax probability ``p(referable)`` against the targets ``grade >= 2``.
Referable means moderate or worse DR (grade >= 2 on the 0-4 ICDR scale the Kaggle data
uses), the definition of Gulshan et al. 2016 less its macular-edema criterion, which the
Kaggle data does not grade; Raghu et al. 2019 report this AUC on RETINA. For CheXpert the
trainer's ROC-AUC is the macro mean over the 5 pathologies (U-Ones / U-Zeros are the two
simplest uncertainty policies of Irvin et al. 2019); the sigmoid loss is chosen by
``train.loss = "auto"`` from ``multi_label``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from transfusion_jax.config import check_choice
from transfusion_jax.data.errors import DataError, DatasetNotFoundError

# CheXpert's 14 observations in the column order of its train.csv / valid.csv (columns 6-19),
# which is the order of the tfds `chexpert` builder's ``label`` sequence.
CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices")
# The 5 competition pathologies (Irvin et al. 2019), in the order of the task's outputs.
CHEXPERT5: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
# The class names of one CheXpert observation in the tfds builder.
_CHEXPERT_STATES = ("uncertain", "positive", "negative", "unmentioned")
REFERABLE_DR_MIN_GRADE = 2

LabelFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class RawLabel:
    """What a dataset stores as its label, as far as a transform needs to know.

    Attributes:
      kind: ``"class"`` (one integer class), ``"class_sequence"`` (a sequence of integer
        classes, e.g. one state per observation) or ``"multi_hot"`` (a float vector).
      names: the class names for ``class`` / ``class_sequence``; the name of each entry for
        ``multi_hot`` (e.g. an image folder's label columns).
      dataset: the dataset's name, for messages.
      key: the label's feature key or CSV column(s), for messages.
    """

    kind: str
    names: tuple[str, ...]
    dataset: str = ""
    key: str = "label"

    def describe(self) -> str:
        shown = ", ".join(self.names[:8]) + (", ..." if len(self.names) > 8 else "")
        return f"dataset {self.dataset!r} stores {self.key!r} as {self.kind} ({shown})"


@dataclasses.dataclass(frozen=True)
class LabelTransform:
    """A map from stored labels to a task's labels.

    Attributes:
      description: one line for docs and messages.
      num_classes: outputs of the task (the model's head size).
      multi_label: whether task labels are multi-hot ``float32 (num_classes,)`` (sigmoid
        loss) rather than one integer class (softmax loss).
      bind: ``bind(raw) -> fn`` checks the stored label against what the transform needs
        (raising `DatasetNotFoundError` naming the fix) and returns ``fn(stored) -> label``.
    """

    description: str
    num_classes: int
    multi_label: bool
    bind: Callable[[RawLabel], LabelFn]


def _mismatch(name: str, raw: RawLabel, needs: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"data.label_transform={name!r} needs {needs}, but {raw.describe()}. Use a dataset "
        "that holds those labels, or set --config.data.label_transform='' (or the transform "
        "that fits this dataset).")


def _grades(raw: RawLabel) -> np.ndarray | None:
    """The DR grade of each class index, or None if the class names are not grades 0-4."""
    try:
        grades = np.array([int(n) for n in raw.names])
    except ValueError:
        return None
    if not len(grades) or grades.min() < 0 or grades.max() > 4 or len(set(grades)) < len(grades):
        return None
    return grades


def _bind_referable_dr(raw: RawLabel) -> LabelFn:
    grades = _grades(raw) if raw.kind == "class" else None
    if grades is None:
        raise _mismatch("referable_dr", raw, "diabetic-retinopathy grades 0-4 as one class "
                        "label (e.g. tfds 'diabetic_retinopathy_detection', or an image_folder "
                        "whose label column holds the grades 0..4)")
    referable = (grades >= REFERABLE_DR_MIN_GRADE).astype(np.int64)

    def fn(stored: np.ndarray) -> np.ndarray:
        index = int(stored)
        if index < 0:  # tfds stores -1 for unlabelled images (its 'sample' split)
            raise DataError(f"dataset {raw.dataset!r}: an example has no DR grade (label "
                            f"{index}); train and evaluate on a labelled split")
        return np.asarray(referable[index])

    return fn


def _chexpert_positions(raw: RawLabel) -> np.ndarray | None:
    """Index of each `CHEXPERT5` pathology in the stored label vector, or None."""
    if raw.kind == "class_sequence":
        return np.array([CHEXPERT_OBSERVATIONS.index(p) for p in CHEXPERT5])
    if raw.kind == "multi_hot" and set(CHEXPERT5) <= set(raw.names):
        return np.array([raw.names.index(p) for p in CHEXPERT5])
    return None


def _chexpert_binder(name: str, uncertain: float) -> Callable[[RawLabel], LabelFn]:
    """U-Ones (``uncertain=1``) or U-Zeros (``uncertain=0``) over the 5 pathologies."""

    def bind(raw: RawLabel) -> LabelFn:
        positions = _chexpert_positions(raw)
        if positions is None or (raw.kind == "class_sequence"
                                 and not set(_CHEXPERT_STATES) <= set(raw.names)):
            raise _mismatch(name, raw, "CheXpert's per-observation labels (tfds 'chexpert': "
                            f"a sequence of {'/'.join(_CHEXPERT_STATES)} classes, or an "
                            "image_folder whose label columns include "
                            f"{', '.join(CHEXPERT5)} with values 1, 0, -1 (uncertain))")
        if raw.kind == "class_sequence":
            # Stored class index -> task value: positive 1, uncertain 1|0, the rest 0.
            table = np.zeros(len(raw.names), np.float32)
            table[raw.names.index("positive")] = 1.0
            table[raw.names.index("uncertain")] = uncertain

            def fn(stored: np.ndarray) -> np.ndarray:
                states = np.asarray(stored)
                if states.shape != (len(CHEXPERT_OBSERVATIONS),):
                    raise DataError(
                        f"dataset {raw.dataset!r}: a label holds {states.shape} states, not "
                        f"one per CheXpert observation ({len(CHEXPERT_OBSERVATIONS)})")
                return table[states[positions]]

            return fn

        def fn_values(stored: np.ndarray) -> np.ndarray:  # 1 / 0 / -1 (uncertain) columns
            values = np.asarray(stored, np.float32)[positions]
            return np.where(values < 0, np.float32(uncertain), (values > 0.5)).astype(np.float32)

        return fn_values

    return bind


LABEL_TRANSFORMS: dict[str, LabelTransform] = {
    "referable_dr": LabelTransform(
        "DR grades 0-4 -> referable DR (grade >= 2), 2 classes", num_classes=2,
        multi_label=False, bind=_bind_referable_dr),
    "chexpert5_uones": LabelTransform(
        "CheXpert 5 pathologies, multi-hot, uncertain -> 1", num_classes=len(CHEXPERT5),
        multi_label=True, bind=_chexpert_binder("chexpert5_uones", 1.0)),
    "chexpert5_uzeros": LabelTransform(
        "CheXpert 5 pathologies, multi-hot, uncertain -> 0", num_classes=len(CHEXPERT5),
        multi_label=True, bind=_chexpert_binder("chexpert5_uzeros", 0.0)),
}


def get_label_transform(name: str) -> LabelTransform | None:
    """`LABEL_TRANSFORMS[name]`, or None for ``""`` (labels as stored).

    Raises:
      ConfigError: ``name`` is neither ``""`` nor a key of `LABEL_TRANSFORMS`.
    """
    if not name:
        return None
    check_choice("data.label_transform", name, LABEL_TRANSFORMS)
    return LABEL_TRANSFORMS[name]
