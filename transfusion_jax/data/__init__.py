"""Datasets (tfds array_record builders, image folders) and grain input pipelines."""

from transfusion_jax.data.errors import DataError, DatasetNotFoundError
from transfusion_jax.data.labels import LABEL_TRANSFORMS, LabelTransform
from transfusion_jax.data.pipeline import (
    eval_batches,
    first_examples,
    train_dataset,
    train_iterator,
)
from transfusion_jax.data.preprocess import NORMALIZATIONS
from transfusion_jax.data.shipped import SHIPPED_BUILDERS
from transfusion_jax.data.sources import FOLDER_DATASET, DatasetMeta, open_source

__all__ = [
    "FOLDER_DATASET", "LABEL_TRANSFORMS", "NORMALIZATIONS", "SHIPPED_BUILDERS", "DataError",
    "DatasetMeta", "DatasetNotFoundError", "LabelTransform", "eval_batches", "first_examples",
    "open_source",
    "train_dataset", "train_iterator",
]
